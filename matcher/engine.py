"""`Matcher`: composes catalog, keyword index, semantic backstop and calibration into results."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from .cachefiles import read_cache_file
from .calibration import (
    LOW,
    PathSummary,
    calibrate,
    clears_high,
    confidence_tiers,
    decide,
    is_ambiguous,
    keyword_is_confident,
    summarize,
)
from .catalog import Catalog, Task, default_catalog, load_catalog
from .config import CONFIG_VERSION, FieldWeights, MatcherConfig
from .errors import ConfigError, ConfigWarning, QueryError, SemanticUnavailableError
from .gate import RequestGate
from .head import SparseRow, TaskHead, cached_head, fuse, head_key
from .reasons import outcome_reasoning
from .results import (
    CandidateExplanation,
    Capability,
    FuzzyCorrection,
    TaskMatch,
    TaskMatchCandidate,
)
from .semantic import Embedder, SemanticIndex, profile_texts, semantic_available, thread_count, usable_cores
from .text import normalize, split_negated, tokenize

if TYPE_CHECKING:
    from .keyword import KeywordIndex

__all__ = ["Matcher", "amatch", "default_config", "match", "resolve_embedder"]

CAPABILITY_CATEGORY = "capability"
SemanticOption = bool | Literal["auto", "onnx", "torch"] | Embedder | str | os.PathLike[str]
SEMANTIC_CHOICES: dict[str, SemanticOption] = {"auto": "auto", "on": True, "off": False,
                                               "onnx": "onnx", "torch": "torch"}
"""Command-line and environment spellings of the `semantic` option."""
SEMANTIC_HELP = ("embedding backstop: auto (if installed; ONNX Runtime, else torch), on (required), off, "
                 "or a backend: onnx, torch")
_KEYWORD_OPTIONS = ("auto", "onnx", "torch")
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scored:
    """Calibrated scores of one query over every profile, before cutting to top_k."""

    scores: FloatArray
    keyword_raw: FloatArray
    semantic: FloatArray | None
    matcher: str
    repaired: str
    corrections: tuple[FuzzyCorrection, ...]
    coverage: float
    gate: float | None = None
    negated: tuple[str, ...] = ()
    normalized: str = ""
    candidates: BoolArray | None = None  # the tasks that may be candidates (None: every task)
    head: FloatArray | None = None  # the discriminative head's probabilities (None: not used)
    summary: PathSummary | None = None  # the keyword path's summary, when it answered (reduced once)


@dataclass(frozen=True)
class CacheInfo:
    """What a matcher's caches saved: see `Matcher.cache_info`."""

    fuzzy_hits: int
    fuzzy_misses: int
    embeddings_from_cache: bool | None


class Matcher:
    """Ranks the tasks of a catalog against free-text requests.

    `semantic` chooses the embedding backstop: ``"auto"`` uses it when its dependencies are
    installed, ``True`` requires it, ``False`` stays keyword-only, and an `Embedder` instance
    is used as given. The backend of ``"auto"`` and ``True`` is ONNX Runtime when onnxruntime is
    installed and the model's export passes its check against torch, else torch; ``"onnx"`` and
    ``"torch"`` choose one (`matcher.encoders`). A model folder (a `Path`, or a string naming an existing
    folder), such as one `task-matcher finetune` wrote, is loaded with the ``"auto"`` backend; the
    shipped config was tuned with the shipped MiniLM, so such a matcher self-calibrates. `threads` is
    the intra-op thread count of an encode (default: ``$TASK_MATCHER_THREADS``, else 1; 0 keeps the
    backend's default; see `matcher.semantic.thread_count`). `config` holds every threshold and weight
    (`MatcherConfig`).

    Without a `config`, the shipped one is used when it was tuned for this catalog (the default
    catalog); any other catalog is self-calibrated from its own phrases when the index is first
    needed (`tuning.self_calibrate`), and the result is cached on disk beside the embeddings. A
    `config` tuned for another catalog is used as given, with a `ConfigWarning`.
    """

    def __init__(self, catalog: Catalog | str | Path | None = None, *,
                 semantic: SemanticOption = "auto", config: MatcherConfig | None = None,
                 cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        if catalog is None:
            catalog = default_catalog()
        elif isinstance(catalog, (str, Path)):
            from .semantic import default_cache_dir

            catalog = load_catalog(catalog, cache_dir=cache_dir if cache_dir is not None else default_cache_dir())
        elif not isinstance(catalog, Catalog):
            raise TypeError(f"catalog must be a Catalog or a path, got {type(catalog).__name__}")
        if config is not None and not isinstance(config, MatcherConfig):
            raise TypeError(f"config must be a MatcherConfig, got {type(config).__name__}")
        self.catalog = catalog
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._embedder = resolve_embedder(semantic, cache_dir=self._cache_dir, threads=threads)
        self._given_config = config
        self._reused_vectors: Mapping[str, npt.NDArray[np.float32]] | None = None
        if config is not None:
            _warn_if_tuned_elsewhere(config, catalog)
            self._config: MatcherConfig | None = config
        else:
            shipped = default_config(semantic=self._embedder is not None)
            own_model = model_folder_option(semantic) is not None  # the shipped config's weights fit MiniLM
            self._config = shipped if _tuned_for(shipped, catalog) and not own_model else None
        self._profiles = catalog.profiles()
        self._is_task = np.array([p.kind == "task" for p in self._profiles])
        self._is_unsupported = ~self._is_task
        self._gate: RequestGate | None = None
        self._keyword: KeywordIndex | None = None
        self._semantic: SemanticIndex | None = None
        self._head: TaskHead | None = None
        self._head_built = False
        self._lock = threading.RLock()

    @property
    def config(self) -> MatcherConfig:
        """Every weight and threshold in use (self-calibrated on first use for a catalog without one)."""
        if self._config is None:
            with self._lock:
                if self._config is None:
                    self._config = self._self_calibrated()
        return self._config

    def _self_calibrated(self) -> MatcherConfig:
        """The self-calibrated config of this catalog: read from the cache, or fitted and cached."""
        from .tuning import self_calibrate

        shipped = default_config(semantic=self._embedder is not None)
        model = None if self._embedder is None else self._embedder.model_id
        path = _self_calibration_path(self._cache_dir, self.catalog.fingerprint, model)
        cached = _read_self_calibration(path)
        if cached is not None and _tuned_for(cached, self.catalog):
            _log.info("self-calibration read from %s", path)
            return cached
        _log.info("self-calibrating %d tasks from their own phrases (no config was tuned for this catalog)",
                  len(self.catalog))
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an unmet target is in the report
                fitted = self_calibrate(self.catalog, semantic=self._embedder if self._embedder else False,
                                        base=MatcherConfig(max_query_chars=shipped.max_query_chars))
        except ValueError as exc:
            warnings.warn(f"{exc}; using the config tuned for the default catalog instead: tune one for "
                          "this catalog with `task-matcher tune`", ConfigWarning, stacklevel=4)
            return shipped
        _log.info("self-calibration done in %.1f s", time.perf_counter() - started)
        try:
            fitted.save(path)
        except OSError as exc:
            warnings.warn(f"cannot cache the self-calibration at {path} ({exc}); it will be fitted again "
                          "next time", RuntimeWarning, stacklevel=4)
        return fitted

    def _request_gate(self) -> RequestGate | None:
        if self._gate is None and self.config.gate is not None:
            gate = self.config.request_gate()
            if gate is not None and gate.reads_embeddings and self._embedder is None:
                raise ConfigError(
                    "this config's request gate reads sentence embeddings, so it needs the semantic "
                    "backstop: use semantic=True, or the keyword-only config default_config(semantic=False)")
            self._gate = gate
        return self._gate

    @property
    def embedder(self) -> Embedder | None:
        """The embedding backend of the semantic backstop (None: keyword-only); another matcher given it
        as `semantic` shares its model."""
        return self._embedder

    @property
    def semantic_enabled(self) -> bool:
        """Whether the embedding backstop is part of this matcher."""
        return self._embedder is not None

    @property
    def model_id(self) -> str | None:
        """The embedding model's id, which names its backend (None: keyword-only)."""
        return None if self._embedder is None else self._embedder.model_id

    def _keyword_index(self) -> KeywordIndex:
        if self._keyword is None:
            with self._lock:
                if self._keyword is None:
                    config = self.config  # resolved (and logged) first, so the timing is the index's own
                    started = time.perf_counter()
                    from .keyword import KeywordIndex  # scikit-learn loads only to build an uncached index
                    from .semantic import default_cache_dir

                    self._keyword = KeywordIndex(
                        self._profiles, weights=config.field_weights,
                        fuzzy_cutoff=config.fuzzy_cutoff,
                        fuzzy_min_length=config.fuzzy_min_length,
                        cache_dir=self._cache_dir if self._cache_dir is not None else default_cache_dir(),
                    )
                    _log.info("keyword index built: %d profiles in %.2f s", len(self._profiles),
                              time.perf_counter() - started)
        return self._keyword

    def _semantic_index(self) -> SemanticIndex | None:
        if self._embedder is None:
            return None
        if self._semantic is None:
            with self._lock:
                if self._semantic is None:
                    started = time.perf_counter()
                    self._semantic = SemanticIndex(
                        self._profiles, self._embedder, fingerprint=self.catalog.fingerprint,
                        cache_dir=self._cache_dir,
                        centroid_weight=self.config.semantic_centroid_weight,
                        known=self._reused_vectors,
                    )
                    self._reused_vectors = None
                    _log.info("semantic index built: %d profiles in %.1f s", len(self._profiles),
                              time.perf_counter() - started)
        return self._semantic

    def _task_head(self) -> TaskHead | None:
        """The discriminative head of this catalog (`matcher.head`), fitted or read from the cache on
        first need; None without the semantic backstop or when the catalog has nothing to tell apart."""
        index = self._semantic_index()
        if index is None:
            return None
        if not self._head_built:
            with self._lock:
                if not self._head_built:
                    from .semantic import default_cache_dir

                    words, labels = self._head_training_rows()
                    self._head = cached_head(
                        words, index.text_vectors, labels, vocabulary=self._keyword_index().vocabulary_size,
                        key=head_key(self.catalog.fingerprint, self._embedder.model_id if self._embedder else ""),
                        cache_dir=self._cache_dir if self._cache_dir is not None else default_cache_dir())
                    self._head_built = True
        return self._head

    def _head_training_rows(self) -> tuple[list[SparseRow], npt.NDArray[np.int64]]:
        """The head's training rows: each profile text's word vector (as a query's is built) and its
        label, the profile's position or -1 for an out-of-scope profile; in `SemanticIndex.text_vectors` order."""
        keyword = self._keyword_index()
        words, labels = [], []
        for position, profile in enumerate(self._profiles):
            for text in profile_texts(profile):
                words.append(keyword.query_vector(keyword.repair(normalize(text))[0]))
                labels.append(position if profile.kind == "task" else -1)
        return words, np.asarray(labels, dtype=np.int64)

    def head_probabilities(self, repaired: str, vector: npt.NDArray[np.float32]) -> FloatArray | None:
        """The head's probability of every profile for a repaired query embedded as `vector` (None: no head)."""
        head = self._task_head()
        if head is None:
            return None
        words = [self._keyword_index().query_vector(repaired)]
        probabilities: FloatArray = head.profile_probabilities(words, vector[None, :], self._is_task)[0]
        return probabilities

    def updated(self, *, add: Iterable[Task | Mapping[str, Any]] = (),
                replace: Iterable[Task | Mapping[str, Any]] = (), remove: Iterable[str] = ()) -> Matcher:
        """A new matcher over this catalog with tasks added, replaced and removed
        (`Catalog.updated`, which validates the result); this matcher is unchanged and may go on serving.

        The new one shares this one's embedding model and cache folder, and reuses the embeddings
        of every profile text it keeps, so only new texts are encoded. Its keyword index is fitted
        again (the IDF of every word depends on the whole catalog). A config given to this matcher is
        kept (with the `ConfigWarning` of a config tuned for another catalog); otherwise the new
        catalog self-calibrates on first use, or reads its self-calibration from the cache.
        """
        catalog = self.catalog.updated(add=add, replace=replace, remove=remove)
        fresh = Matcher(catalog, semantic=self._embedder if self._embedder is not None else False,
                        config=self._given_config, cache_dir=self._cache_dir)
        semantic = self._semantic
        if semantic is not None:
            fresh._reused_vectors = semantic.vectors_by_text()
        return fresh

    def cache_info(self) -> CacheInfo:
        """Hits and misses of the fuzzy word-lookup cache so far, and whether the task embeddings
        came from the on-disk cache (None until the semantic index is built, or without one)."""
        keyword, semantic = self._keyword, self._semantic
        hits, misses = keyword.fuzzy_cache_info() if keyword is not None else (0, 0)
        return CacheInfo(hits, misses, None if semantic is None else semantic.from_cache)

    def warm_up(self) -> None:
        """Build the keyword index and load the model, the task embeddings and the discriminative head
        now, not on first query."""
        self._keyword_index()
        index = self._semantic_index()
        if index is not None:
            index.similarities("warm up")
            if self.config.semantic_head_weight > 0:
                self._task_head()

    def _check(self, query: object, top_k: object) -> str:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if len(query) > self.config.max_query_chars:
            raise QueryError(
                f"query is {len(query):,} characters; the limit is {self.config.max_query_chars:,} "
                "(MatcherConfig.max_query_chars): describe the job in a few sentences"
            )
        normalized = normalize(query)
        if not normalized:
            raise QueryError("query is empty or whitespace-only: describe the job to match")
        if len(normalized) > 2 * self.config.max_query_chars:
            raise QueryError(
                f"query expands to {len(normalized):,} characters under Unicode normalization (NFKC); "
                f"the limit is {2 * self.config.max_query_chars:,}: send plain text"
            )
        words = len(tokenize(normalized))
        if words > self.config.max_query_chars // 2:
            raise QueryError(
                f"query reads as {words:,} words after Unicode normalization (NFKC); the limit is "
                f"{self.config.max_query_chars // 2:,}, the most a query of max_query_chars plain "
                "characters can hold: describe the job in a few sentences"
            )
        return normalized

    def _scope(self, tasks: Iterable[str] | None, categories: Iterable[str] | None) -> BoolArray | None:
        """Which profiles may score under a request's scope: its tasks and every out-of-scope profile
        (no-match evidence whatever the scope); None when unscoped (`Catalog.select` checks the ids)."""
        if tasks is None and categories is None:
            return None
        chosen = self.catalog.select(tasks=tasks, categories=categories)
        return np.array([not task or p.id in chosen for p, task in zip(self._profiles, self._is_task, strict=True)])

    def _score(self, normalized: str, scope: BoolArray | None = None) -> _Scored:
        """Score the request part of `normalized` (negated mentions removed) over the profiles in
        `scope` (all when None); the gate reads it whole."""
        request, negated = split_negated(normalized)
        request_gate = self._request_gate()
        excluded = ruled_out_profiles(self._keyword_index(), negated)
        index = self._semantic_index() if request_gate is not None and request_gate.reads_embeddings else None
        vector = None
        if index is None:
            scored = self._semantic_unless_confident(self._keyword_path(request, excluded, scope), None, excluded,
                                                     scope, request)
        else:  # encoded once, for the gate and the semantic path
            with _encode_slot(usable_cores()) as core_idle:  # a worker thread scores the keywords meanwhile
                pending = _worker_pool().submit(self._keyword_path, request, excluded, scope) if core_idle else None
                vector = index.encode([request])[0]  # the encoder releases the GIL while it runs
                keyword = self._keyword_path(request, excluded, scope) if pending is None else pending.result()
            scored = self._semantic_unless_confident(keyword, vector, excluded, scope)
        gate = None if request_gate is None else request_gate.probability(normalized, vector)
        return replace(scored, gate=gate, negated=negated, normalized=normalized)

    def _keyword_path(self, normalized: str, excluded: tuple[int, ...], scope: BoolArray | None) -> _Scored:
        """The keyword path's calibrated scores and their summary."""
        cfg = self.config
        candidates = self._is_task if scope is None else self._is_task & scope
        keyword = self._keyword_index().score(normalized)
        raw = _zeroed(keyword.raw, excluded) if excluded else keyword.raw
        kw_scores = calibrate(raw, slope=cfg.keyword_slope, null_bias=cfg.keyword_null_bias,
                              null_coverage=cfg.keyword_null_coverage, coverage=keyword.coverage,
                              decimals=cfg.score_decimals, within=scope)
        summary = self._summary(kw_scores, candidates, keyword.coverage >= cfg.keyword_min_coverage)
        return _Scored(kw_scores, raw, None, "keyword", keyword.query_text, keyword.corrections, keyword.coverage,
                       candidates=candidates, summary=summary)

    def _semantic_unless_confident(self, keyword: _Scored, vector: npt.NDArray[np.float32] | None,
                                   excluded: tuple[int, ...], scope: BoolArray | None,
                                   normalized: str | None = None) -> _Scored:
        """The keyword path's answer when it is confident (or there is no semantic path), else the
        semantic path's: `vector` is the request's embedding, encoded from `normalized` when None.
        The `excluded` profiles (ruled out by the request) score 0 on every signal, and profiles out
        of `scope` take no part: calibration is a softmax over the profiles in scope alone."""
        cfg = self.config
        assert keyword.summary is not None
        if self._embedder is None or keyword_is_confident(cfg, keyword.summary)[0]:
            return keyword
        index = self._semantic_index()
        if index is None:
            return keyword
        if vector is None:
            assert normalized is not None
            vector = index.encode([normalized])[0]
        centroid, best = index.components(vector[None, :])
        similarity = _zeroed(np.round(index.mix(centroid, best, cfg.semantic_centroid_weight)[0], 6), excluded)
        head = None
        if cfg.semantic_head_weight > 0:
            probabilities = self.head_probabilities(keyword.repaired, vector)
            head = None if probabilities is None else _zeroed(probabilities, excluded)
        fused = fuse(keyword.keyword_raw, similarity, head, fusion=cfg.semantic_fusion,
                     head_weight=cfg.semantic_head_weight)
        scores = calibrate(fused, slope=cfg.semantic_slope, null_bias=cfg.semantic_null_bias,
                           null_coverage=cfg.semantic_null_coverage, coverage=keyword.coverage,
                           decimals=cfg.score_decimals, within=scope)
        return _Scored(scores, keyword.keyword_raw, similarity, "semantic", keyword.repaired, keyword.corrections,
                       keyword.coverage, candidates=keyword.candidates, head=head)

    def _summary(self, scores: FloatArray, candidates: BoolArray, known_words: bool) -> PathSummary:
        """One query's scores reduced as `tune` reduces every labelled query's."""
        return summarize(scores[None, :], candidates, self._is_unsupported, np.array([known_words]))

    def _high_thresholds(self) -> FloatArray | None:
        """Each profile's own ``high`` threshold (None: the config's one for all)."""
        cfg = self.config
        if not cfg.task_high_thresholds:
            return None
        return np.array([cfg.high_threshold_for(p.id) for p in self._profiles])

    def _result(self, query: str, scored: _Scored, top_k: int) -> TaskMatch:
        cfg = self.config
        order = _ranking(scored.scores)
        candidates_mask = self._is_task if scored.candidates is None else scored.candidates
        task_order = order[candidates_mask[order]]
        unsupported = order[self._is_unsupported[order]]
        task_scores = scored.scores[task_order].tolist()
        best_unsupported = float(scored.scores[unsupported[0]]) if len(unsupported) else 0.0
        known_words = scored.matcher == "semantic" or scored.coverage >= cfg.keyword_min_coverage
        summary = scored.summary if scored.summary is not None else self._summary(scored.scores, candidates_mask,
                                                                                  known_words)
        thresholds = self._high_thresholds()
        gate = None if scored.gate is None else np.array([scored.gate])
        decision = decide(cfg, summary, None, high_thresholds=thresholds, gate=gate)
        out_of_scope, matched = bool(decision.out_of_scope[0]), bool(decision.matched[0])
        gate_decided = not matched and gate is not None and bool(decision.clears_bar[0])
        tiers = confidence_tiers(task_scores[: max(top_k, 2)], cfg, leader_high=matched)
        candidates = tuple(
            TaskMatchCandidate(self._profiles[i].id, float(s), t)
            for i, s, t in zip(task_order[:top_k].tolist(), task_scores[:top_k], tiers, strict=False)
        )
        chosen = candidates[0] if matched else None
        ambiguous = is_ambiguous(task_scores[:2], cfg)
        top = self._profiles[int(task_order[0])]
        if out_of_scope:
            kind, profile, position = "unsupported", self._profiles[int(unsupported[0])], int(unsupported[0])
            confidence = confidence_tiers([best_unsupported], cfg, leader_high=bool(clears_high(
                best_unsupported, 0.0, cfg.high_threshold, margin=cfg.high_margin, decimals=cfg.score_decimals)))[0]
        else:
            profile, position, confidence = top, int(task_order[0]), tiers[0]
            if top.category == CAPABILITY_CATEGORY and confidence != LOW:
                kind = "capability"
            else:
                kind = "task" if chosen is not None else "none"
        words = self._keyword_index().shared_words(scored.repaired, position)
        reasoning = outcome_reasoning(
            kind=kind,
            profile=profile if (kind != "none" or float(scored.scores[position]) > 0) else None,
            words=words,
            score=float(scored.scores[position]),
            matcher=scored.matcher,
            similarity=None if scored.semantic is None else float(scored.semantic[position]),
            runner_up=self._profiles[int(task_order[1])] if ambiguous else None,
            corrections=scored.corrections,
            not_a_request=(self._gate.evidence(scored.normalized)[0]
                           if gate_decided and self._gate is not None else None),
            negated=scored.negated,
        )
        capability = None
        if kind == "capability":
            capability = Capability(
                id=top.id, label=top.title or top.id, category=top.category or "",
                category_id=top.category or "", desc=top.description or "",
            )
        return TaskMatch(
            query=query,
            matched=chosen is not None,
            chosen=chosen,
            candidates=candidates,
            ambiguous=ambiguous,
            matcher=scored.matcher,
            type=kind,
            confidence=confidence,
            reasoning=reasoning,
            capability=capability,
        )

    def match(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
              categories: Iterable[str] | None = None) -> TaskMatch:
        """Rank the catalog's tasks for `query`; `top_k` is clamped to the number of tasks.

        `tasks` (ids) and `categories` scope the request: only tasks in both (when both are given)
        are candidates, and scores are calibrated among them, as if the catalog held only those
        tasks and its out-of-scope profiles. An id or category the catalog lacks raises `ScopeError`.
        """
        normalized = self._check(query, top_k)
        return self._result(query, self._score(normalized, self._scope(tasks, categories)), top_k)

    async def amatch(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
                     categories: Iterable[str] | None = None) -> TaskMatch:
        """`match` for async code: it runs on a worker thread (`asyncio.to_thread`), so the event
        loop goes on serving other tasks while the query is scored; same result, same errors."""
        import asyncio  # here, not at import: `import matcher` stays light
        from functools import partial

        return await asyncio.to_thread(partial(self.match, query, top_k, tasks=tasks, categories=categories))

    def match_many(self, queries: Iterable[str], top_k: int = 5, *, tasks: Iterable[str] | None = None,
                   categories: Iterable[str] | None = None) -> list[TaskMatch]:
        """`match` for each query, in order, under one scope; every result equals its one-by-one call."""
        batch = list(queries) if not isinstance(queries, str) else None
        if batch is None:
            raise TypeError("match_many takes an iterable of queries, not a single str")
        scope = self._scope(tasks, categories)
        normalized = [self._check(q, top_k) for q in batch]
        return [self._result(q, self._score(n, scope), top_k) for q, n in zip(batch, normalized, strict=False)]

    def explain(self, query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
                categories: Iterable[str] | None = None) -> list[CandidateExplanation]:
        """Why each of the top candidates scored what it did (not part of the JSON body)."""
        normalized = self._check(query, top_k)
        scored = self._score(normalized, self._scope(tasks, categories))
        result = self._result(query, scored, top_k)
        index = self._keyword_index()
        positions = {p.id: i for i, p in enumerate(self._profiles)}
        explanations = []
        details = index.explain(scored.repaired, [positions[c.task_id] for c in result.candidates])
        for candidate, (fields, best_phrase) in zip(result.candidates, details, strict=True):
            position = positions[candidate.task_id]
            explanations.append(CandidateExplanation(
                task_id=candidate.task_id,
                score=candidate.score,
                confidence=candidate.confidence,
                keyword_raw=round(float(scored.keyword_raw[position]), 4),
                semantic_similarity=(None if scored.semantic is None
                                     else round(float(scored.semantic[position]), 4)),
                fields=fields,
                best_phrase=best_phrase,
                corrections=scored.corrections,
                head_probability=None if scored.head is None else float(scored.head[position]),
            ))
        return explanations


_RULED_OUT_MIN_RAW = 0.2


def ruled_out_profiles(index: KeywordIndex, spans: Sequence[str]) -> tuple[int, ...]:
    """Positions of the profiles that negated mentions name ("not sentiment" names sentiment analysis).

    Each span's best keyword match, under fixed equal signal weights so that tuning and matching
    agree, when its raw score reaches `_RULED_OUT_MIN_RAW`; ties go to the first profile by id.
    """
    from .keyword import combine

    positions: set[int] = set()
    for span in spans:
        raw = combine(index.components(span), FieldWeights())
        best = int(np.argmax(raw))
        if raw[best] >= _RULED_OUT_MIN_RAW:
            positions.add(best)
    return tuple(sorted(positions))


def _zeroed(values: FloatArray, positions: tuple[int, ...]) -> FloatArray:
    if not positions:
        return values
    copy = values.copy()
    copy[list(positions)] = 0.0
    return copy


_WORKER_POOL: tuple[int, ThreadPoolExecutor] | None = None
_WORKER_POOL_LOCK = threading.Lock()
_ENCODES_IN_FLIGHT = 0
_IN_FLIGHT_LOCK = threading.Lock()


@contextmanager
def _encode_slot(cores: int) -> Iterator[bool]:
    """Count this process's encodes in flight while the block runs; yield whether a core is left
    for the keyword thread (each overlapped match keeps two busy). With every core busy the
    hand-off costs throughput and buys nothing (2 cores, 16 requests in flight on one worker:
    ~164 requests/s overlapping every match, ~183 never overlapping)."""
    global _ENCODES_IN_FLIGHT
    with _IN_FLIGHT_LOCK:
        _ENCODES_IN_FLIGHT += 1
        core_idle = cores >= 2 * _ENCODES_IN_FLIGHT
    try:
        yield core_idle
    finally:
        with _IN_FLIGHT_LOCK:
            _ENCODES_IN_FLIGHT -= 1


def _worker_pool() -> ThreadPoolExecutor:
    """The threads that score a query's keywords while the calling thread encodes it; one per
    core, made again in a forked child (its copy of the pool has no threads)."""
    global _WORKER_POOL
    with _WORKER_POOL_LOCK:
        if _WORKER_POOL is None or _WORKER_POOL[0] != os.getpid():
            _WORKER_POOL = (os.getpid(), ThreadPoolExecutor(max_workers=usable_cores(),
                                                            thread_name_prefix="task-matcher-keyword"))
        return _WORKER_POOL[1]


def _ranking(scores: FloatArray) -> npt.NDArray[np.int64]:
    """Total order: score descending, then index (profiles are sorted by id) ascending."""
    return np.argsort(-scores, kind="stable")  # a stable sort keeps ties in index order


def model_folder_option(semantic: object) -> Path | None:
    """The model folder a `semantic` option names (a path, or a string other than a backend name),
    checked to be a sentence-transformers folder; None for every other option."""
    if isinstance(semantic, bool) or not isinstance(semantic, (str, os.PathLike)):
        return None
    folder = Path(semantic)
    if isinstance(semantic, str) and (semantic in _KEYWORD_OPTIONS or not folder.exists()):
        return None  # a backend name, or a misspelt option (a TypeError names the choices)
    if not (folder / "modules.json").is_file():
        what = ("does not exist" if not folder.exists()
                else "is not a sentence-transformers model folder (no modules.json)")
        raise ConfigError(f"semantic={str(semantic)!r}: {what}. Pass 'auto', 'onnx', 'torch', True or False, or a "
                          "folder made by `task-matcher finetune CATALOG --out DIR`")
    return folder


def resolve_embedder(semantic: SemanticOption, *, cache_dir: Path | None = None,
                     threads: int | None = None) -> Embedder | None:
    """The embedder a `Matcher` uses for its `semantic`, `cache_dir` and `threads` options (None:
    keyword-only)."""
    if isinstance(semantic, Embedder):
        if threads is not None:
            raise ValueError("threads applies to the built-in backends; set the threads of your own "
                             "Embedder on it instead")
        return semantic
    thread_count(threads)  # a bad value fails here, whatever the backend
    if semantic is False:
        return None
    from .encoders import onnx_available, select_embedder

    folder = model_folder_option(semantic)
    if folder is not None:
        if not (onnx_available() or semantic_available()):
            raise SemanticUnavailableError(
                f"semantic={str(folder)!r} needs the optional extra: pip install 'task-matcher[semantic]' "
                "-c constraints.txt")
        return select_embedder("auto", model=folder, cache_dir=cache_dir, threads=threads)
    if not (semantic is True or semantic in _KEYWORD_OPTIONS):
        raise TypeError("semantic must be True, False, 'auto', 'onnx', 'torch', a model folder (a Path, or the "
                        f"path of an existing folder) or an Embedder, got {semantic!r}")

    if semantic == "onnx":
        if not onnx_available():
            raise SemanticUnavailableError(
                "semantic='onnx' needs onnxruntime and tokenizers: pip install 'task-matcher[semantic]' "
                "-c constraints.txt")
        return select_embedder("onnx", cache_dir=cache_dir, threads=threads)
    if not semantic_available():
        if semantic == "auto":
            warnings.warn(
                "sentence-transformers is not installed: matching is keyword-only. "
                "Install 'task-matcher[semantic]' for the semantic backstop, or pass semantic=False.",
                RuntimeWarning, stacklevel=3,
            )
            return None
        raise SemanticUnavailableError(
            f"semantic={semantic!r} needs the optional extra: pip install 'task-matcher[semantic]' "
            "-c constraints.txt"
        )
    return select_embedder("torch" if semantic == "torch" else "auto", cache_dir=cache_dir, threads=threads)


_DEFAULT_CONFIGS: dict[bool, MatcherConfig] = {}
_DEFAULT_MATCHER: Matcher | None = None
_DEFAULT_LOCK = threading.Lock()
_SHIPPED_CONFIGS = {True: "default-config.json", False: "default-config-keyword.json"}


def default_config(*, semantic: bool = True) -> MatcherConfig:
    """The config tuned for the default catalog: for the semantic cascade, or keyword-only.

    Produced by `task-matcher tune` (see the README); built-in defaults if the file is absent.
    """
    if semantic not in _DEFAULT_CONFIGS:
        shipped = resources.files("matcher") / "data" / _SHIPPED_CONFIGS[bool(semantic)]
        if shipped.is_file():
            with resources.as_file(shipped) as path:
                _DEFAULT_CONFIGS[bool(semantic)] = MatcherConfig.load(path)
        else:
            _DEFAULT_CONFIGS[bool(semantic)] = MatcherConfig()
    return _DEFAULT_CONFIGS[bool(semantic)]


def _default_matcher() -> Matcher:
    global _DEFAULT_MATCHER
    if _DEFAULT_MATCHER is None:
        with _DEFAULT_LOCK:
            if _DEFAULT_MATCHER is None:
                _DEFAULT_MATCHER = Matcher(default_catalog())
    return _DEFAULT_MATCHER


def match(query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
          categories: Iterable[str] | None = None) -> TaskMatch:
    """Match `query` against the bundled default catalog with the default configuration
    (`tasks` and `categories` scope it: see `Matcher.match`)."""
    return _default_matcher().match(query, top_k, tasks=tasks, categories=categories)


async def amatch(query: str, top_k: int = 5, *, tasks: Iterable[str] | None = None,
                 categories: Iterable[str] | None = None) -> TaskMatch:
    """`match` for async code, off the event loop (see `Matcher.amatch`)."""
    return await _default_matcher().amatch(query, top_k, tasks=tasks, categories=categories)


def _tuned_for(config: MatcherConfig, catalog: Catalog) -> bool:
    """Whether `config` was tuned (or self-calibrated) for exactly this catalog."""
    return (config.tuning or {}).get("catalog_fingerprint") == catalog.fingerprint


def _warn_if_tuned_elsewhere(config: MatcherConfig, catalog: Catalog) -> None:
    tuned = (config.tuning or {}).get("catalog_fingerprint")
    if tuned and tuned != catalog.fingerprint:
        warnings.warn(
            f"this config was tuned for another catalog (fingerprint {tuned[:12]}, this one is "
            f"{catalog.fingerprint[:12]}): its thresholds may not hold here. Pass config=None to "
            "self-calibrate, or tune one for this catalog with `task-matcher tune`.",
            ConfigWarning, stacklevel=3)


_SELF_CALIBRATION_FORMAT = 1


_MAX_SELF_CALIBRATION_BYTES = 64 * 1024 * 1024


def _read_self_calibration(path: Path) -> MatcherConfig | None:
    """The cached self-calibration at `path`, or None: absent, or unusable (then with a warning).

    Read like the embedding cache (`cachefiles.read_cache_file`): a FIFO, device or link at the
    path, or a folder the process may not enter, is an unusable cache, not a hang or a crash.
    """
    try:
        blob = read_cache_file(path, max_bytes=_MAX_SELF_CALIBRATION_BYTES)
        if blob is None:
            return None
        data = json.loads(blob.decode("utf-8"))
        if not isinstance(data, dict):
            raise ConfigError("a matcher config must be a JSON object")
        return MatcherConfig.from_dict(data, source=str(path))
    except (OSError, ValueError) as exc:  # ValueError: JSON, UTF-8 and ConfigError alike
        warnings.warn(f"self-calibration cache {path} is unusable ({exc}); fitting it again",
                      RuntimeWarning, stacklevel=5)
        return None


def _self_calibration_path(cache_dir: Path | None, fingerprint: str, model: str | None) -> Path:
    """Cache file of a catalog's self-calibration, keyed by catalog, model and the shipped inputs."""
    from .semantic import default_cache_dir

    shipped = resources.files("matcher") / "data" / "out-of-scope.jsonl"
    digest = hashlib.sha256(json.dumps({"format": _SELF_CALIBRATION_FORMAT, "fingerprint": fingerprint,
                                        "model": model, "config_version": CONFIG_VERSION},
                                       sort_keys=True).encode())
    digest.update(shipped.read_bytes() if shipped.is_file() else b"")
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    return folder / f"selfcal-{digest.hexdigest()[:24]}.json"
