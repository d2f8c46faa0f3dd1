"""`Matcher`: composes catalog, keyword index, semantic backstop and calibration into results."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from .calibration import HIGH, LOW, calibrate, confidence_tiers, is_ambiguous
from .catalog import Catalog, default_catalog, load_catalog
from .config import MatcherConfig
from .errors import QueryError, SemanticUnavailableError
from .reasons import outcome_reasoning
from .results import (
    CandidateExplanation,
    Capability,
    FuzzyCorrection,
    TaskMatch,
    TaskMatchCandidate,
)
from .semantic import Embedder, SemanticIndex, SentenceTransformerEmbedder, semantic_available
from .text import normalize

if TYPE_CHECKING:
    from .keyword import KeywordIndex

__all__ = ["Matcher", "default_config", "match"]

CAPABILITY_CATEGORY = "capability"
SemanticOption = bool | Literal["auto"] | Embedder
SEMANTIC_CHOICES: dict[str, SemanticOption] = {"auto": "auto", "on": True, "off": False}
"""Command-line and environment spellings of the `semantic` option."""
FloatArray = npt.NDArray[np.float64]


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


class Matcher:
    """Ranks the tasks of a catalog against free-text requests.

    `semantic` chooses the embedding backstop: ``"auto"`` uses it when its dependencies are
    installed, ``True`` requires it, ``False`` stays keyword-only, and an `Embedder` instance
    is used as given. `config` holds every threshold and weight (`MatcherConfig`).
    """

    def __init__(self, catalog: Catalog | str | Path | None = None, *,
                 semantic: SemanticOption = "auto", config: MatcherConfig | None = None,
                 cache_dir: str | Path | None = None) -> None:
        if catalog is None:
            catalog = default_catalog()
        elif isinstance(catalog, (str, Path)):
            catalog = load_catalog(catalog)
        elif not isinstance(catalog, Catalog):
            raise TypeError(f"catalog must be a Catalog or a path, got {type(catalog).__name__}")
        if config is not None and not isinstance(config, MatcherConfig):
            raise TypeError(f"config must be a MatcherConfig, got {type(config).__name__}")
        self.catalog = catalog
        self._embedder = _resolve_embedder(semantic)
        self.config = config if config is not None else default_config(semantic=self._embedder is not None)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._profiles = catalog.profiles()
        self._is_task = np.array([p.kind == "task" for p in self._profiles])
        self._keyword: KeywordIndex | None = None
        self._semantic: SemanticIndex | None = None
        self._lock = threading.Lock()

    @property
    def semantic_enabled(self) -> bool:
        """Whether the embedding backstop is part of this matcher."""
        return self._embedder is not None

    def _keyword_index(self) -> KeywordIndex:
        if self._keyword is None:
            with self._lock:
                if self._keyword is None:
                    from .keyword import KeywordIndex  # scipy and scikit-learn load here, once

                    self._keyword = KeywordIndex(
                        self._profiles, weights=self.config.field_weights,
                        fuzzy_cutoff=self.config.fuzzy_cutoff,
                        fuzzy_min_length=self.config.fuzzy_min_length,
                    )
        return self._keyword

    def _semantic_index(self) -> SemanticIndex | None:
        if self._embedder is None:
            return None
        if self._semantic is None:
            with self._lock:
                if self._semantic is None:
                    self._semantic = SemanticIndex(
                        self._profiles, self._embedder, fingerprint=self.catalog.fingerprint,
                        cache_dir=self._cache_dir,
                        centroid_weight=self.config.semantic_centroid_weight,
                    )
        return self._semantic

    def warm_up(self) -> None:
        """Build the keyword index and load the model and task embeddings now, not on first query."""
        self._keyword_index()
        index = self._semantic_index()
        if index is not None:
            index.similarities("warm up")

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
        return normalized

    def _score(self, normalized: str) -> _Scored:
        cfg = self.config
        keyword = self._keyword_index().score(normalized)
        kw_scores = calibrate(keyword.raw, slope=cfg.keyword_slope, null_bias=cfg.keyword_null_bias,
                              null_coverage=cfg.keyword_null_coverage, coverage=keyword.coverage,
                              decimals=cfg.score_decimals)
        if self._keyword_is_confident(kw_scores, keyword.coverage):
            return _Scored(kw_scores, keyword.raw, None, "keyword", keyword.query_text,
                           keyword.corrections, keyword.coverage)
        index = self._semantic_index()
        if index is None:
            return _Scored(kw_scores, keyword.raw, None, "keyword", keyword.query_text,
                           keyword.corrections, keyword.coverage)
        similarity = np.round(index.similarities(normalized), 6)
        fused = cfg.semantic_fusion * keyword.raw + (1.0 - cfg.semantic_fusion) * similarity
        scores = calibrate(fused, slope=cfg.semantic_slope, null_bias=cfg.semantic_null_bias,
                           null_coverage=cfg.semantic_null_coverage, coverage=keyword.coverage,
                           decimals=cfg.score_decimals)
        return _Scored(scores, keyword.raw, similarity, "semantic", keyword.query_text,
                       keyword.corrections, keyword.coverage)

    def _keyword_is_confident(self, scores: FloatArray, coverage: float) -> bool:
        """True when a task, not an out-of-scope profile, leads with ``high`` confidence on a query
        whose words the catalog mostly knows."""
        order = _ranking(scores)
        if not self._is_task[order[0]] or coverage < self.config.keyword_min_coverage:
            return False
        task_scores = scores[order[self._is_task[order]][:2]].tolist()
        lead = task_scores[0] - (task_scores[1] if len(task_scores) > 1 else 0.0)
        return bool(task_scores[0] >= self.config.fallback_threshold
                    and round(lead, self.config.score_decimals) >= self.config.high_margin)

    def _result(self, query: str, scored: _Scored, top_k: int) -> TaskMatch:
        cfg = self.config
        order = _ranking(scored.scores)
        task_order = order[self._is_task[order]]
        unsupported = order[~self._is_task[order]]
        task_scores = scored.scores[task_order].tolist()
        best_unsupported = float(scored.scores[unsupported[0]]) if len(unsupported) else 0.0
        out_of_scope = best_unsupported >= cfg.medium_threshold and best_unsupported > task_scores[0]
        known_words = scored.matcher == "semantic" or scored.coverage >= cfg.keyword_min_coverage
        tiers = confidence_tiers(task_scores[: max(top_k, 2)], cfg, allow_high=not out_of_scope and known_words)
        candidates = tuple(
            TaskMatchCandidate(self._profiles[i].id, float(s), t)
            for i, s, t in zip(task_order[:top_k].tolist(), task_scores[:top_k], tiers, strict=False)
        )
        chosen = candidates[0] if tiers[0] == HIGH else None
        ambiguous = is_ambiguous(task_scores[:2], cfg)
        top = self._profiles[int(task_order[0])]
        if out_of_scope:
            kind, profile, position = "unsupported", self._profiles[int(unsupported[0])], int(unsupported[0])
            confidence = confidence_tiers([best_unsupported], cfg)[0]
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

    def match(self, query: str, top_k: int = 5) -> TaskMatch:
        """Rank the catalog's tasks for `query`; `top_k` is clamped to the number of tasks."""
        normalized = self._check(query, top_k)
        return self._result(query, self._score(normalized), top_k)

    def match_many(self, queries: Iterable[str], top_k: int = 5) -> list[TaskMatch]:
        """`match` for each query, in order; every result equals its one-by-one call."""
        batch = list(queries) if not isinstance(queries, str) else None
        if batch is None:
            raise TypeError("match_many takes an iterable of queries, not a single str")
        normalized = [self._check(q, top_k) for q in batch]
        return [self._result(q, self._score(n), top_k) for q, n in zip(batch, normalized, strict=False)]

    def explain(self, query: str, top_k: int = 5) -> list[CandidateExplanation]:
        """Why each of the top candidates scored what it did (not part of the JSON body)."""
        normalized = self._check(query, top_k)
        scored = self._score(normalized)
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
            ))
        return explanations


def _ranking(scores: FloatArray) -> npt.NDArray[np.int64]:
    """Total order: score descending, then index (profiles are sorted by id) ascending."""
    return np.lexsort((np.arange(len(scores)), -scores)).astype(np.int64)


def _resolve_embedder(semantic: SemanticOption) -> Embedder | None:
    if semantic is False:
        return None
    if semantic is True:
        if not semantic_available():
            raise SemanticUnavailableError(
                "semantic=True needs the optional extra: pip install 'task-matcher[semantic]' "
                "-c constraints.txt"
            )
        return SentenceTransformerEmbedder()
    if semantic == "auto":
        if semantic_available():
            return SentenceTransformerEmbedder()
        warnings.warn(
            "sentence-transformers is not installed: matching is keyword-only. "
            "Install 'task-matcher[semantic]' for the semantic backstop, or pass semantic=False.",
            RuntimeWarning, stacklevel=3,
        )
        return None
    if isinstance(semantic, Embedder):
        return semantic
    raise TypeError(f"semantic must be True, False, 'auto' or an Embedder, got {semantic!r}")


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


def match(query: str, top_k: int = 5) -> TaskMatch:
    """Match `query` against the bundled default catalog with the default configuration."""
    return _default_matcher().match(query, top_k)

