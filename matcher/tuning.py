"""Offline tuning: fit weights, calibration and thresholds of a `MatcherConfig` from labelled queries.

Everything is a deterministic grid or coordinate search over precomputed similarity matrices,
so the same catalog and labelled data always give the same config. Calibration is a maximum-
likelihood fit of the catalog-wide softmax with a "no match" option (`calibration.calibrate`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .calibration import PathSummary, calibrate, decide, summarize
from .catalog import Catalog, Task
from .config import FieldWeights, MatcherConfig
from .engine import Matcher, SemanticOption, ruled_out_profiles
from .errors import CatalogWarning, UnknownTaskError
from .gate import RequestGate, fit_gate
from .head import fuse
from .keyword import SIGNALS, combine
from .semantic import Embedder, profile_texts
from .text import normalize, split_negated

__all__ = ["PRECISION_Z", "load_labelled", "self_calibrate", "tune"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
T = TypeVar("T")
_log = logging.getLogger(__name__)

_WEIGHT_VALUES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
_FUSION_VALUES = tuple(round(0.1 * i, 1) for i in range(11))
_CENTROID_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
_HEAD_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
_THRESHOLDS = (*(round(0.3 + 0.025 * i, 3) for i in range(28)), 0.99)
_MARGINS = tuple(round(0.025 * i, 3) for i in range(13))
_MEDIUM_PRECISION = 0.5
_MIN_IN_SCOPE = 10
_CALIBRATION_BOUNDS = ((0.5, 200.0), (-50.0, 50.0), (-50.0, 50.0))
_CALIBRATION_STEPS = (0.1, 0.02, 0.02)
"""Grid of (slope, null bias, null coverage weight): far coarser than any CPU's rounding noise,
far finer than a change that moves a decision (a slope step of 0.1 moves a score by < 0.002)."""
_GRID_TOLERANCE = 1e-9
_GATE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(19))
_GATE_FOLDS = 5
_LABELLED_KEYS = frozenset({"text", "task_id", "style", "kind", "note"})
PRECISION_Z = 1.0
"""Default safety margin on precision, in standard errors of the Wilson bound: one standard error.
In two-fold cross-validation on the default catalog's tuning split (`benchmarks/precision_z.py`,
figures in `benchmarks/PRECISION_Z.md`), z = 1 answered the most held-out queries in both folds
and on the validation split, with precision at least 98.5% (target 97%); 1.645 answered 4-6 points
fewer, and below 1 the per-task thresholds, whose minimum answers shrink with z, overfit."""


@dataclass(frozen=True)
class _Path(PathSummary):
    """Calibrated scores of every labelled query on one path, with whether its leading task is the label."""

    correct: BoolArray


def tune(catalog: Catalog, labelled: Iterable[tuple[str, str | None]], *,
         semantic: SemanticOption = "auto", base: MatcherConfig | None = None,
         target_precision: float = 0.97, out_of_scope_share: float | None = 0.25,
         precision_z: float = PRECISION_Z, catalog_phrases: bool = True,
         progress: bool = False) -> MatcherConfig:
    """Fit a `MatcherConfig` to `labelled` (text, task id or None for out-of-scope) pairs.

    With `catalog_phrases` (the default) the labelled queries are added to what self-calibration
    learns from (`self_calibrate`: every catalog phrase held out as a pseudo-query, the shipped
    out-of-scope corpus as negatives). Those catalog texts are a prior: each counts as one labelled
    query while there are at most 200 labels, and 200 / labels beyond, so a few dozen labels refine
    the self-calibrated operating point instead of replacing it with one fitted to too little data,
    and a thousand labels of real traffic outweigh it.

    Fits signal weights (top-1 accuracy), the keyword and semantic calibration curves, the
    fusion weight and the embedding aggregation, then picks the fallback threshold, the
    ``high`` threshold and margin that answer the most queries correctly while ``high`` stays
    right at least `target_precision` of the time, and the ``medium`` threshold. The returned
    config's `tuning` holds precision and recall at that operating point, per task too.

    `out_of_scope_share` is the weight of the out-of-scope queries, as a share of the total, in
    the calibration fit and in the precision that the thresholds must reach: at the default 0.25
    they count as a quarter of all queries however few of them are labelled, so a handful of
    out-of-scope examples still shapes the "no match" option and a false match on one of them
    weighs on ``high`` as it would in traffic where one request in four is out of scope (0.25
    beat 0.5 and the labelled proportions in two-fold cross-validation on the tuning splits of
    the benchmark datasets). ``None`` keeps the labelled proportions.

    `precision_z` is the safety margin on precision, in standard errors: a setting reaches
    `target_precision` when the Wilson lower bound of its precision at that z does (see
    `PRECISION_Z` for how the default was chosen). Larger values answer less on small label sets.
    """
    base = base if base is not None else MatcherConfig()
    pairs = [(text, label) for text, label in labelled]
    for _, label in pairs:
        if label is not None and label not in catalog:
            raise UnknownTaskError(label, catalog.suggest(label))
    if sum(label is not None for _, label in pairs) < _MIN_IN_SCOPE:
        raise ValueError(f"tune needs at least {_MIN_IN_SCOPE} in-scope labelled queries")
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    if out_of_scope_share is not None and not 0.0 < out_of_scope_share < 1.0:
        raise ValueError(f"out_of_scope_share must be in (0, 1) or None, got {out_of_scope_share}")
    _check_precision_z(precision_z)

    texts = [normalize(text) for text, _ in pairs]
    labels = _positions(catalog, [label for _, label in pairs])
    parts: list[_Observed] = []
    matcher: Matcher | None = None
    if catalog_phrases:
        try:
            labelled_texts = set(texts)
            matcher, parts = _catalog_observations(
                catalog, semantic=semantic, base=base, progress=progress, also_embed=texts,
                negatives=[t for t in (normalize(n) for n in _shipped_out_of_scope()) if t not in labelled_texts])
        except ValueError as exc:  # too few phrases to hold out: the labelled queries alone
            _log.info("tuning on the labelled queries alone: %s", exc)
    if matcher is None:
        matcher = Matcher(catalog, semantic=semantic, config=base)
    if parts:  # the catalog's texts count fully up to _CATALOG_PRIOR_LABELS labels, then fade as labels grow
        parts = [part.as_prior(min(1.0, _CATALOG_PRIOR_LABELS / len(pairs))) for part in parts]
    parts.append(_observe(matcher, texts, labels, progress=progress))
    source = "labelled queries" + (" and held-out catalog phrases" if len(parts) > 1 else "")
    return _fit(matcher, _Observed.concat(parts), target_precision=target_precision,
                precision_z=precision_z,
                out_of_scope_share=out_of_scope_share, gate_learns_catalog_phrases=len(parts) == 1,
                source=source, task_thresholds=True, progress=progress)


@dataclass(frozen=True)
class _Observed:
    """What the engine sees of each query against a catalog: keyword signals, coverage, embedding cosines."""

    texts: list[str]
    labels: IntArray
    signals: dict[str, FloatArray]
    coverage: FloatArray
    centroid: FloatArray | None
    best: FloatArray | None
    vectors: npt.NDArray[np.float32] | None = None
    head: FloatArray | None = None
    """The discriminative head's probability of each profile (None: no head)."""
    weights: FloatArray | None = None
    """How much each query counts in every fit (None: one each)."""
    prior: BoolArray | None = None
    """Which rows are the catalog's own texts standing in for labelled queries (None: none)."""

    @property
    def row_weights(self) -> FloatArray:
        return np.ones(len(self.texts)) if self.weights is None else self.weights

    @property
    def prior_rows(self) -> BoolArray:
        return np.zeros(len(self.texts), dtype=bool) if self.prior is None else self.prior

    @property
    def reported(self) -> BoolArray:
        """The rows the tuning report describes: the labelled queries, or every row when there are none."""
        labelled = ~self.prior_rows
        return labelled if labelled.any() else np.ones(len(self.texts), dtype=bool)

    def as_prior(self, weight: float) -> _Observed:
        """These observations of the catalog's own texts as a prior, each counting `weight`."""
        return replace(self, weights=np.full(len(self.texts), weight), prior=np.ones(len(self.texts), dtype=bool))

    @staticmethod
    def concat(parts: list[_Observed]) -> _Observed:
        semantic = all(p.centroid is not None for p in parts)
        head = all(p.head is not None for p in parts)
        return _Observed(
            texts=[t for p in parts for t in p.texts],
            labels=np.concatenate([p.labels for p in parts]),
            signals={name: np.vstack([p.signals[name] for p in parts]) for name in SIGNALS},
            coverage=np.concatenate([p.coverage for p in parts]),
            centroid=np.vstack([p.centroid for p in parts if p.centroid is not None]) if semantic else None,
            best=np.vstack([p.best for p in parts if p.best is not None]) if semantic else None,
            vectors=np.vstack([p.vectors for p in parts if p.vectors is not None]) if semantic else None,
            head=np.vstack([p.head for p in parts if p.head is not None]) if head else None,
            weights=np.concatenate([p.row_weights for p in parts]),
            prior=np.concatenate([p.prior_rows for p in parts]),
        )


def _positions(catalog: Catalog, labels: list[str | None]) -> IntArray:
    position = {p.id: i for i, p in enumerate(catalog.profiles())}
    return np.array([position[label] if label is not None else -1 for label in labels], dtype=np.int64)


def _observe(matcher: Matcher, texts: list[str], labels: IntArray, *, progress: bool = False) -> _Observed:
    """Score normalized `texts` as the engine does: negated mentions removed, each query on its own."""
    splits = [split_negated(text) for text in texts]
    requests = [request for request, _ in splits]
    index = matcher._keyword_index()
    n_profiles = len(matcher.catalog.profiles())
    signals = {name: np.zeros((len(texts), n_profiles)) for name in SIGNALS}
    coverage = np.zeros(len(texts))
    excluded = [ruled_out_profiles(index, negated) for _, negated in splits]
    for row, text in enumerate(_progress(requests, progress, "keyword signals")):
        coverage[row] = index.coverage(index.repair(text)[0])
        for name, values in index.components(text).items():
            signals[name][row] = values
            signals[name][row, list(excluded[row])] = 0.0
    centroid = best = vectors = None
    head: FloatArray | None = None
    semantic_index = matcher._semantic_index()
    if semantic_index is not None:
        vectors = np.vstack([semantic_index.encode([text]) for text in _progress(requests, progress, "embeddings")])
        centroid, best = semantic_index.components(vectors)
        task_head = matcher._task_head()
        if task_head is not None:
            words = [index.query_vector(index.repair(text)[0]) for text in requests]
            head = task_head.profile_probabilities(words, vectors, matcher._is_task)
        ruled_out = [values for values in (centroid, best, head) if values is not None]
        for row, positions in enumerate(excluded):  # a profile the request ruled out scores 0, as in the engine
            for values in ruled_out:
                values[row, list(positions)] = 0.0
    return _Observed(texts, labels, signals, coverage, centroid, best, vectors, head)


def _fit(matcher: Matcher, observed: _Observed, *, target_precision: float, precision_z: float,
         out_of_scope_share: float | None, gate_learns_catalog_phrases: bool, source: str,
         task_thresholds: bool = False, progress: bool = False) -> MatcherConfig:
    """Every weight, calibration curve, the request gate and the thresholds, from observed queries;
    per-task thresholds with `task_thresholds`, from the labelled rows (not the catalog's own texts)."""
    base, catalog = matcher.config, matcher.catalog
    profiles = catalog.profiles()
    is_task = np.array([p.kind == "task" for p in profiles])
    labels, coverage, signals = observed.labels, observed.coverage, observed.signals
    in_scope = labels >= 0
    rows = observed.row_weights
    weights_per_query = _query_weights(in_scope, out_of_scope_share, rows)

    weights = _fit_weights(signals, base.field_weights, labels, is_task, rows)
    keyword_raw = combine(signals, weights)
    k_slope, k_bias, k_coverage = _fit_calibration(
        keyword_raw, coverage, labels, is_task, weights_per_query,
        (base.keyword_slope, base.keyword_null_bias, base.keyword_null_coverage))
    config = replace(base, field_weights=weights, keyword_slope=k_slope, keyword_null_bias=k_bias,
                     keyword_null_coverage=k_coverage, task_high_thresholds={}, tuning=None)
    keyword_scores = calibrate(keyword_raw, slope=k_slope, null_bias=k_bias, null_coverage=k_coverage,
                               coverage=coverage, decimals=base.score_decimals)
    keyword_path = _reduce(keyword_scores, labels, is_task, coverage >= base.keyword_min_coverage)

    semantic_path: _Path | None = None
    semantic_index = matcher._semantic_index()
    if semantic_index is not None and observed.centroid is not None and observed.best is not None:
        centroid, best = observed.centroid, observed.best
        centroid_weight, fusion = _fit_fusion(semantic_index.mix, centroid, best, keyword_raw,
                                              labels, is_task, rows)
        similarity = np.round(semantic_index.mix(centroid, best, centroid_weight), 6)
        head_weight, fused, (s_slope, s_bias, s_coverage) = _fit_head_weight(
            keyword_raw, similarity, observed.head, fusion, coverage, labels, is_task, weights_per_query,
            (base.semantic_slope, base.semantic_null_bias, base.semantic_null_coverage))
        config = replace(config, semantic_fusion=fusion, semantic_centroid_weight=centroid_weight,
                         semantic_head_weight=head_weight, semantic_slope=s_slope, semantic_null_bias=s_bias,
                         semantic_null_coverage=s_coverage)
        semantic_scores = calibrate(fused, slope=s_slope, null_bias=s_bias, null_coverage=s_coverage,
                                    coverage=coverage, decimals=base.score_decimals)
        semantic_path = _reduce(semantic_scores, labels, is_task, np.ones(len(labels), dtype=bool))

    gate, gate_scores = _fit_request_gate(matcher, observed, learn_catalog_phrases=gate_learns_catalog_phrases,
                                          progress=progress)
    config = replace(config, gate=gate.to_dict())
    config = _fit_thresholds(config, keyword_path, semantic_path, in_scope, target_precision,
                             weights_per_query, gate_scores, z=precision_z, progress=progress)
    ids = [p.id for p in profiles]
    labelled = ~observed.prior_rows if task_thresholds else np.zeros(len(labels), dtype=bool)
    config, task_report = _fit_task_thresholds(config, keyword_path, semantic_path, in_scope, target_precision,
                                               weights_per_query, gate_scores, labelled, ids, z=precision_z)
    decisions = _decide(config, keyword_path, semantic_path, gate_scores, ids)
    right = float(weights_per_query[decisions.matched & decisions.correct & in_scope].sum())
    answered = float(weights_per_query[decisions.matched].sum())
    target_met = _precision_lower_bound(right, answered, precision_z) >= target_precision
    if not target_met:
        warnings.warn(
            f"no setting reaches {target_precision:.0%} precision for high answers on these {source} "
            f"(Wilson lower bound at z = {precision_z:g}); the most precise setting was kept, so `matched` will be "
            "wrong more often than the target. Add labelled data, enrich the catalog profiles or "
            "enable the semantic backstop.", RuntimeWarning, stacklevel=3)
    reported = observed.reported
    report = _report(config, keyword_path, semantic_path, labels, gate_scores,
                     profiles_ids=[p.id for p in profiles], rows=reported, weights=weights_per_query)
    report.update({
        "source": source,
        "target_precision": target_precision,
        "target_met": bool(target_met),
        "precision_z": precision_z,
        "labels_needed": _labels_needed(right, answered, target_precision, precision_z),
        "out_of_scope_share": out_of_scope_share,
        "queries": int(reported.sum()),
        "in_scope": int((in_scope & reported).sum()),
        "out_of_scope": int((~in_scope & reported).sum()),
        "catalog_prior": {"held_out_texts": int(observed.prior_rows.sum()),
                          "weight_each": round(float(observed.row_weights[observed.prior_rows].max()), 4)}
        if observed.prior_rows.any() else None,
        "task_thresholds": task_report if task_thresholds else None,
        "catalog_fingerprint": catalog.fingerprint,
        "semantic_model": None if semantic_index is None else matcher._embedder.model_id  # type: ignore[union-attr]
    })
    return replace(config, tuning=report)


_SELF_CALIBRATION_FOLDS = 2
_CATALOG_PRIOR_LABELS = 200
_SELF_CALIBRATION_MAX_QUERIES = 6000
_SELF_CALIBRATION_MAX_PROFILES = 2000


def self_calibrate(catalog: Catalog, *, semantic: SemanticOption = "auto", base: MatcherConfig | None = None,
                   out_of_scope: Iterable[str] | None = None, target_precision: float = 0.97,
                   out_of_scope_share: float | None = 0.25, precision_z: float = PRECISION_Z,
                   progress: bool = False) -> MatcherConfig:
    """Fit a `MatcherConfig` for a catalog that has no labelled queries, from its own texts.

    Each task's phrases are split into two folds by position; every phrase is scored as a
    pseudo-query against the catalog without its fold, so it cannot find itself (the phrases of
    out-of-scope profiles become out-of-scope pseudo-queries). The shipped out-of-scope corpus
    (`matcher/data/out-of-scope.jsonl`: questions about a service, real-world actions, remarks,
    other ML jobs), or `out_of_scope`, is scored against the whole catalog as negatives. Then
    everything is fitted as `tune` does. At most 6,000 held-out phrases are scored (every k-th
    one beyond that). Raises ValueError when the catalog has fewer than 10 phrases to hold out or
    more than 2,000 profiles; `Matcher` then falls back to the shipped config with a warning.
    """
    _check_precision_z(precision_z)
    base = base if base is not None else MatcherConfig()
    negatives = [normalize(t) for t in (out_of_scope if out_of_scope is not None else _shipped_out_of_scope())]
    full, parts = _catalog_observations(catalog, semantic=semantic, base=base, negatives=negatives,
                                        progress=progress)
    return _fit(full, _Observed.concat(parts), target_precision=target_precision, precision_z=precision_z,
                out_of_scope_share=out_of_scope_share, gate_learns_catalog_phrases=False,
                source="held-out catalog phrases (self-calibration)", progress=progress)


def _catalog_observations(catalog: Catalog, *, semantic: SemanticOption, base: MatcherConfig,
                          negatives: list[str], also_embed: Sequence[str] = (),
                          progress: bool = False) -> tuple[Matcher, list[_Observed]]:
    """The matcher of the whole catalog and what it sees of the catalog's own texts: each phrase
    scored against the catalog without its fold, and the normalized `negatives` against the whole.
    The returned matcher embeds through a memo primed with every text, `also_embed` (normalized
    labelled queries the caller will observe with it) included.

    Raises ValueError when the catalog has fewer than 10 phrases to hold out or more than 2,000
    profiles.
    """
    if len(catalog.profiles()) > _SELF_CALIBRATION_MAX_PROFILES:
        raise ValueError(f"{catalog.source}: self-calibration handles up to {_SELF_CALIBRATION_MAX_PROFILES:,} "
                         f"profiles (its signal matrices grow with queries x profiles); this catalog has "
                         f"{len(catalog.profiles()):,}")
    folds = [_fold(catalog, fold) for fold in range(_SELF_CALIBRATION_FOLDS)]
    total = sum(len(queries) for _, queries in folds)
    if total > _SELF_CALIBRATION_MAX_QUERIES:  # every k-th held-out phrase, the same on every run
        stride = math.ceil(total / _SELF_CALIBRATION_MAX_QUERIES)
        folds = [(fold_catalog, queries[::stride]) for fold_catalog, queries in folds]
    held = sum(1 for _, queries in folds for _, label in queries if label is not None)
    if held < _MIN_IN_SCOPE:
        raise ValueError(f"{catalog.source}: self-calibration needs at least {_MIN_IN_SCOPE} task phrases that "
                         f"can be held out (tasks with two or more phrases); this catalog has {held}")
    full = Matcher(catalog, semantic=semantic, config=base)
    embedder = full._embedder
    memo: _MemoEmbedder | None = None
    if embedder is not None:
        texts = {text for task in catalog.profiles() for text in profile_texts(task)}
        texts.update(split_negated(text)[0] for _, queries in folds for text, _ in queries)
        texts.update(split_negated(text)[0] for text in itertools.chain(negatives, also_embed))
        memo = _MemoEmbedder(embedder)
        memo.prime(sorted(texts), progress=progress)
    parts: list[_Observed] = []
    with tempfile.TemporaryDirectory(prefix="task-matcher-selfcal-") as scratch:
        if memo is not None:  # the real index is built by the engine itself, never from these vectors
            full = Matcher(catalog, semantic=memo, config=base, cache_dir=scratch)
            full.warm_up()
        for fold_catalog, queries in _progress(folds, progress, "self-calibration folds", unit="fold"):
            fold_matcher = Matcher(fold_catalog, semantic=memo if memo is not None else False, config=base,
                                   cache_dir=scratch)
            parts.append(_observe(fold_matcher, [text for text, _ in queries],
                                  _positions(catalog, [label for _, label in queries])))
    if negatives:
        parts.append(_observe(full, negatives, np.full(len(negatives), -1, dtype=np.int64)))
    return full, parts


def _fold(catalog: Catalog, fold: int) -> tuple[Catalog, list[tuple[str, str | None]]]:
    """The catalog without each profile's phrases at positions ``fold, fold + 2, ...``, and those
    phrases (normalized) labelled with their task, or None for an out-of-scope profile. A profile
    with a single phrase keeps it."""
    profiles: list[Task] = []
    queries: list[tuple[str, str | None]] = []
    for task in catalog.profiles():
        if len(task.phrases) < 2:
            profiles.append(task)
            continue
        out = [p for i, p in enumerate(task.phrases) if i % _SELF_CALIBRATION_FOLDS == fold]
        kept = [p for i, p in enumerate(task.phrases) if i % _SELF_CALIBRATION_FOLDS != fold]
        profiles.append(replace(task, phrases=tuple(kept)))
        queries.extend((normalize(p), task.id if task.kind == "task" else None) for p in out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CatalogWarning)  # the whole catalog has already said so
        return Catalog(profiles, source=f"{catalog.source} (fold {fold})"), queries


def _shipped_out_of_scope() -> list[str]:
    """The out-of-scope corpus shipped with the package, for self-calibration."""
    shipped = resources.files("matcher") / "data" / "out-of-scope.jsonl"
    with resources.as_file(shipped) as path:
        return [text for text, _ in load_labelled(path)]


class _MemoEmbedder:
    """Encodes each distinct text once, in batches, then serves it from memory (self-calibration only)."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    def prime(self, texts: list[str], *, progress: bool = False, batch: int = 256) -> None:
        missing = [t for t in texts if t not in self._vectors]
        chunks = [missing[i:i + batch] for i in range(0, len(missing), batch)]
        for chunk in _progress(chunks, progress, "self-calibration embeddings", unit="batch"):
            for text, vector in zip(chunk, self._inner.encode(chunk), strict=True):
                self._vectors[text] = vector

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.prime(list(dict.fromkeys(texts)))
        return np.vstack([self._vectors[t] for t in texts]).astype(np.float32)


def _labels_needed(right: float, answered: float, target: float, z: float) -> int | None:
    """How many answered queries, at the observed precision, would put its lower bound at `target`.

    None when the observed precision itself is below the target: no amount of such data suffices.
    """
    if answered <= 0 or right / answered < target:
        return None
    precision = right / answered
    for n in itertools.chain(range(1, 1000), range(1000, 100_001, 100)):
        if _precision_lower_bound(precision * n, float(n), z) >= target:
            return n
    return None


def load_labelled(path: str | Path) -> list[tuple[str, str | None]]:
    """Read labelled queries from JSON lines: {"text": ..., "task_id": id or null} per line.

    Both keys are required (an out-of-scope query says ``"task_id": null``) and unknown keys are
    errors, so a misspelt ``"label"`` cannot silently turn a row into an out-of-scope query.
    ``style``, ``kind`` and ``note`` may describe a row; they are not used for tuning.
    """
    source = Path(path)
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{source}: cannot read labelled queries: {reason}") from None
    pairs: list[tuple[str, str | None]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f'{where}: expected an object {{"text": ..., "task_id": ...}}, '
                             f"got {type(row).__name__}")
        unknown = sorted(set(row) - _LABELLED_KEYS)
        missing = sorted({"text", "task_id"} - set(row))
        if unknown or missing:
            problems = [f"unknown key(s) {unknown}" if unknown else "",
                        f"missing key(s) {missing}" if missing else ""]
            raise ValueError(f"{where}: {'; '.join(p for p in problems if p)}; a row is "
                             '{"text": ..., "task_id": id or null} (optional: style, kind, note)')
        text, label = row["text"], row["task_id"]
        if not isinstance(text, str) or not (label is None or isinstance(label, str)):
            raise ValueError(f"{where}: text must be a string and task_id a string or null")
        pairs.append((text, label))
    return pairs


def _progress(items: list[T], enabled: bool, label: str, *, unit: str = "query") -> Iterator[T]:
    """`items`, with a tqdm bar on stderr when enabled and installed; each item is a unit of real work."""
    _log.info("tune: %s (%d %ss)", label, len(items), unit)
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=label, unit=unit)
            return
    yield from items


def _ranking_quality(raw: FloatArray, labels: IntArray, is_task: BoolArray,
                     weights: FloatArray | None = None) -> tuple[float, float]:
    """(top-1 accuracy, mean reciprocal rank) over in-scope queries, tasks only, ties by index,
    each query counting its weight."""
    scores = np.round(np.where(is_task, raw, -1.0), 6)
    rows = np.flatnonzero(labels >= 0)
    if not len(rows):
        return 0.0, 0.0
    counts = np.ones(len(rows)) if weights is None else weights[rows]
    truth = scores[rows, labels[rows]][:, None]
    above = (scores[rows] > truth).sum(axis=1)
    tied_before = ((scores[rows] == truth) & (np.arange(scores.shape[1]) < labels[rows][:, None])).sum(axis=1)
    rank = above + tied_before
    return (float(np.average(rank == 0, weights=counts)), float(np.average(1.0 / (rank + 1), weights=counts)))


def _fit_weights(signals: dict[str, FloatArray], start: FieldWeights, labels: IntArray,
                 is_task: BoolArray, rows: FloatArray) -> FieldWeights:
    """Coordinate ascent over signal weights on top-1 accuracy (then MRR); strict gains only."""
    current = start
    best = _ranking_quality(combine(signals, current), labels, is_task, rows)
    for _ in range(4):
        improved = False
        for name in SIGNALS:
            for value in _WEIGHT_VALUES:
                candidate = replace(current, **{name: value})
                if sum(candidate.as_dict().values()) <= 0:
                    continue
                quality = _ranking_quality(combine(signals, candidate), labels, is_task, rows)
                if quality > best:
                    best, current, improved = quality, candidate, True
        if not improved:
            break
    return current


def _fit_fusion(mix: Any, centroid: FloatArray, best: FloatArray, keyword_raw: FloatArray,
                labels: IntArray, is_task: BoolArray, rows: FloatArray) -> tuple[float, float]:
    """Embedding aggregation and keyword/embedding fusion weight with the best ranking."""
    choice, top = (0.5, 0.5), (-1.0, -1.0)
    for centroid_weight in _CENTROID_VALUES:
        similarity = np.round(mix(centroid, best, centroid_weight), 6)
        for fusion in _FUSION_VALUES:
            quality = _ranking_quality(fusion * keyword_raw + (1 - fusion) * similarity, labels, is_task, rows)
            if quality > top:
                top, choice = quality, (centroid_weight, fusion)
    return choice


def _fit_head_weight(keyword_raw: FloatArray, similarity: FloatArray, head: FloatArray | None, fusion: float,
                     coverage: FloatArray, labels: IntArray, is_task: BoolArray, weights: FloatArray,
                     start: tuple[float, float, float]) -> tuple[float, FloatArray,
                                                                 tuple[float, float, float]]:
    """The weight of the discriminative head in the semantic path's score, the fused scores and
    their calibration: the weight whose fitted calibration has the lowest weighted log-loss (a
    proper score of both the ranking and the confidence), ties to the smaller weight."""
    chosen: tuple[float, FloatArray, tuple[float, float, float]] | None = None
    lowest = math.inf
    for head_weight in (_HEAD_WEIGHTS if head is not None else (0.0,)):
        fused = fuse(keyword_raw, similarity, head, fusion=fusion, head_weight=head_weight)
        params = _fit_calibration(fused, coverage, labels, is_task, weights, start)
        loss = _CalibrationLoss(fused, coverage, labels, is_task, weights)(np.asarray(params))
        if chosen is None or loss < lowest - _GRID_TOLERANCE * max(1.0, abs(lowest)):
            chosen, lowest = (head_weight, fused, params), loss
    assert chosen is not None
    return chosen


def _top_task(raw: FloatArray, labels: IntArray, is_task: BoolArray) -> tuple[FloatArray, BoolArray]:
    scores = np.where(is_task, raw, -1.0)
    top = np.argmax(scores, axis=1)
    return raw[np.arange(len(raw)), top], top == labels


def _query_weights(in_scope: BoolArray, out_of_scope_share: float | None, rows: FloatArray) -> FloatArray:
    """Per-query likelihood weights (`rows` times a class weight) giving the out-of-scope queries
    `out_of_scope_share` of the total."""
    n_in, n_out = float(rows[in_scope].sum()), float(rows[~in_scope].sum())
    if out_of_scope_share is None or n_in == 0 or n_out == 0:
        return rows.copy()
    out_weight = out_of_scope_share / (1.0 - out_of_scope_share) * n_in / n_out
    return rows * np.where(in_scope, 1.0, out_weight)


def _fit_calibration(raw: FloatArray, coverage: FloatArray, labels: IntArray, is_task: BoolArray,
                     weights: FloatArray, start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Weighted maximum-likelihood (slope, null bias, null coverage weight) of the catalog-wide softmax.

    An in-scope query's likelihood is its task's probability; an out-of-scope query's is the
    probability of "no match" plus that of every out-of-scope profile. L-BFGS from `start` is
    deterministic; a failed fit keeps `start`.
    """
    from scipy.optimize import minimize

    loss = _CalibrationLoss(raw, coverage, labels, is_task, weights)
    # The exact gradient lets L-BFGS cross the loss's near-flat stretches (where a finite-difference
    # gradient falls under the tolerance and stops it early), so the grid walk starts next to its end.
    result = minimize(loss.value_and_gradient, np.asarray(start, dtype=np.float64), method="L-BFGS-B",
                      jac=True, bounds=_CALIBRATION_BOUNDS, options={"gtol": 1e-10, "ftol": 1e-15})
    if not result.success and not np.isfinite(result.fun):
        return start
    return _settle_on_grid(loss, result.x)


class _CalibrationLoss:
    """The weighted mean negative log-likelihood of (slope, null bias, null coverage weight), and its gradient.

    Each query's log-sum-exp is shifted by its largest logit (the slope is positive, so that is
    the null logit or the slope times the query's highest raw score) and one exponential of the
    logits serves both the all-profiles total and the out-of-scope profiles' share.
    """

    def __init__(self, raw: FloatArray, coverage: FloatArray, labels: IntArray, is_task: BoolArray,
                 weights: FloatArray) -> None:
        if not np.isfinite(raw).all():
            raise ValueError("calibration needs finite raw scores")
        self._raw, self._coverage = raw, coverage
        self._outside = labels < 0
        self._others = np.flatnonzero(~is_task)
        self._top = raw.max(axis=1)
        self._right = raw[np.arange(len(raw)), np.maximum(labels, 0)]
        self._share = weights / weights.sum()

    def __call__(self, params: FloatArray) -> float:
        return self._evaluate(params, gradient=False)[0]

    def value_and_gradient(self, params: FloatArray) -> tuple[float, FloatArray]:
        value, gradient = self._evaluate(params, gradient=True)
        assert gradient is not None
        return value, gradient

    def _evaluate(self, params: FloatArray, *, gradient: bool) -> tuple[float, FloatArray | None]:
        slope, bias, weight = (float(v) for v in params)
        raw, outside = self._raw, self._outside
        null = bias + weight * self._coverage
        shift = np.maximum(null, slope * self._top)
        exp_task = np.exp(slope * raw - shift[:, None])
        exp_null = np.exp(null - shift)
        exp_out = exp_task[:, self._others]
        total = exp_null + exp_task.sum(axis=1)
        out = exp_null + exp_out.sum(axis=1)
        log_right = np.where(outside, shift + np.log(out), slope * self._right)
        value = float(self._share @ (shift + np.log(total) - log_right))
        if not gradient:
            return value, None
        null_share = exp_null / total - np.where(outside, exp_null / out, 0.0)
        slope_total = (exp_task * raw).sum(axis=1) / total
        slope_right = np.where(outside, (exp_out * raw[:, self._others]).sum(axis=1) / out, self._right)
        return value, np.array([self._share @ (slope_total - slope_right), self._share @ null_share,
                                self._share @ (null_share * self._coverage)])


def _settle_on_grid(loss: Any, optimum: FloatArray) -> tuple[float, float, float]:
    """Round an optimum to the calibration grid, then walk downhill on the grid until no neighbour is lower.

    L-BFGS's last digits depend on the CPU's floating-point kernels; a grid point reached by
    steepest descent over the 26 neighbours does not, because a step is taken only when it lowers
    the loss by more than `_GRID_TOLERANCE` and near-ties go to the first neighbour in a fixed order.
    """
    steps = np.asarray(_CALIBRATION_STEPS)
    low = np.asarray([b[0] for b in _CALIBRATION_BOUNDS])
    high = np.asarray([b[1] for b in _CALIBRATION_BOUNDS])

    seen: dict[tuple[int, ...], float] = {}  # a step's neighbourhood mostly overlaps the last one's

    def at(point: IntArray) -> float:
        key = tuple(int(v) for v in point)
        if key not in seen:
            seen[key] = float(loss(np.clip(point * steps, low, high)))
        return seen[key]

    point = np.round(np.clip(optimum, low, high) / steps).astype(np.int64)
    current = at(point)
    moves = [np.asarray(move, dtype=np.int64) for move in itertools.product((-1, 0, 1), repeat=3) if any(move)]
    for _ in range(10_000):
        tolerance = _GRID_TOLERANCE * max(1.0, abs(current))
        lower = [(at(point + move), point + move) for move in moves]
        lower = [(value, p) for value, p in lower if value < current - tolerance]
        if not lower:
            break
        lowest = min(value for value, _ in lower)
        current, point = next((value, p) for value, p in lower if value <= lowest + tolerance)
    slope, bias, weight = (round(float(v), 4) for v in np.clip(point * steps, low, high))
    return slope, bias, weight


def _reduce(scores: FloatArray, labels: IntArray, is_task: BoolArray, known_words: BoolArray) -> _Path:
    summary = summarize(scores, is_task, ~is_task, known_words)
    return _Path(**{f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)},
                 correct=summary.first == labels)


def _fit_request_gate(matcher: Matcher, observed: _Observed, *, learn_catalog_phrases: bool = True,
                      progress: bool = False) -> tuple[RequestGate, FloatArray]:
    """The request gate fitted on every observed query and the catalog's phrases, and out-of-fold
    probabilities of the observed queries (fold = row number mod 5) for choosing its threshold.

    The catalog's task phrases are requests and its out-of-scope profiles' phrases are not; they
    are in every fold's training data. Both classes weigh the same in the fit, each query counting
    its weight. With the semantic backstop the gate also reads each request's embedding (the
    vector the engine computes anyway).
    """
    catalog = matcher.catalog
    phrases = [(normalize(phrase), task.kind == "task") for task in catalog.profiles() for phrase in task.phrases]
    if not learn_catalog_phrases:  # the queries are the catalog's own phrases, held out
        phrases = []
    catalog_texts = [text for text, _ in phrases]
    all_texts = [*catalog_texts, *observed.texts]
    all_labels = np.asarray([*(label for _, label in phrases), *(observed.labels >= 0).tolist()], dtype=bool)
    vectors: npt.NDArray[np.float32] | None = None
    index = matcher._semantic_index()
    if index is not None and observed.vectors is not None:
        phrase_vectors = (index.encode([split_negated(text)[0] for text in catalog_texts]) if catalog_texts
                          else np.zeros((0, observed.vectors.shape[1]), dtype=np.float32))
        vectors = np.vstack([phrase_vectors, observed.vectors]).astype(np.float32)
    counts = np.concatenate([np.ones(len(catalog_texts)), observed.row_weights])
    positives, negatives = float(counts[all_labels].sum()), float(counts[~all_labels].sum())
    balance = counts * np.where(all_labels, 1.0, positives / max(negatives, 1e-9))
    folds = np.concatenate([np.full(len(catalog_texts), -1), np.arange(len(observed.texts)) % _GATE_FOLDS])
    out_of_fold = np.zeros(len(observed.texts))
    for fold in _progress(list(range(_GATE_FOLDS)), progress, "request gate", unit="fold"):
        train = folds != fold
        gate = fit_gate([t for t, keep in zip(all_texts, train, strict=True) if keep], all_labels[train],
                        vectors=None if vectors is None else vectors[train], sample_weight=balance[train])
        for row in np.flatnonzero(folds == fold):
            out_of_fold[row - len(catalog_texts)] = gate.probability(
                all_texts[row], None if vectors is None else vectors[row])
    final = fit_gate(all_texts, all_labels, vectors=vectors, sample_weight=balance)
    return final, out_of_fold


@dataclass(frozen=True)
class _Decisions:
    predicted: npt.NDArray[np.int64]
    matched: BoolArray
    correct: BoolArray
    top: FloatArray
    out_of_scope: BoolArray
    semantic: BoolArray


def _decide(config: MatcherConfig, keyword: _Path, semantic: _Path | None,
            gate: FloatArray | None = None, ids: Sequence[str] = ()) -> _Decisions:
    """What the engine's cascade answers for every query under `config`: `calibration.decide`, the
    code the engine runs; `ids` (the profile ids) give the per-task ``high`` thresholds."""
    thresholds = None
    if config.task_high_thresholds:
        if not ids:
            raise ValueError("per-task thresholds need the profile ids")
        thresholds = np.array([config.high_threshold_for(i) for i in ids])
    d = decide(config, keyword, semantic, high_thresholds=thresholds, gate=gate)
    correct = keyword.correct if semantic is None else np.where(d.semantic, semantic.correct, keyword.correct)
    return _Decisions(d.path.first, d.matched, correct, d.path.top, d.out_of_scope, d.semantic)


def _check_precision_z(z: float) -> None:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0.0 <= z <= 5.0:
        raise ValueError(f"precision_z must be a number of standard errors in [0, 5], got {z!r}")


def _precision_lower_bound(right: float, answered: float, z: float) -> float:
    """Wilson score lower bound of precision at `z` standard errors: a target met by it tends to
    hold on unseen queries."""
    if answered == 0:
        return 0.0
    p = right / answered
    denominator = 1 + z * z / answered
    centre = p + z * z / (2 * answered)
    spread = z * math.sqrt(p * (1 - p) / answered + z * z / (4 * answered * answered))
    return (centre - spread) / denominator


def _fit_thresholds(config: MatcherConfig, keyword: _Path, semantic: _Path | None,
                    in_scope: BoolArray, target: float, weights: FloatArray, gate: FloatArray, *,
                    z: float, progress: bool = False) -> MatcherConfig:
    """Pick (fallback, high, margin, gate threshold) answering most queries right at `target` precision,
    then medium.

    Precision is judged by its Wilson lower bound at `z` standard errors (`PRECISION_Z`), so a
    target reached on the tuning queries is not an
    artefact of a few lucky answers, with each query weighted as in the calibration fit, so a
    false match on an out-of-scope query costs what `out_of_scope_share` says; if no setting reaches it, the most
    precise one wins. Ties go to the more precise setting, then the stricter threshold, margin and
    gate, and to the lower fallback threshold, which leaves more queries to the fast keyword path.
    `gate` holds out-of-fold gate probabilities, so the gate threshold is judged on queries the gate
    did not learn from.

    ``medium`` starts 0.1 below ``high`` (so a medium tier always exists) and extends down while
    unmatched answers scoring in each 0.1-wide band below it are still right at least half of the time.
    """
    best_key: tuple[float, ...] | None = None
    gate_model, config = config.gate, replace(config, gate=None)  # decided from `gate`; not re-validated per setting
    chosen = config
    fallbacks = (*_THRESHOLDS, 1.0) if semantic is not None else (config.fallback_threshold,)
    grid = list(itertools.product(_THRESHOLDS, _MARGINS))
    for high, margin in _progress(grid, progress, "thresholds", unit="setting"):
        for fallback in (f for f in fallbacks if f >= high):
            candidate = replace(config, high_threshold=high, high_margin=margin,
                                ambiguity_margin=margin, fallback_threshold=fallback,
                                medium_threshold=min(config.medium_threshold, high), gate_threshold=0.0)
            ungated = _decide(candidate, keyword, semantic)
            right_if_matched = ungated.correct & in_scope
            for gate_threshold in _GATE_THRESHOLDS:
                matched = ungated.matched & (gate >= gate_threshold)
                answered = float(weights[matched].sum())
                right = float(weights[matched & right_if_matched].sum())
                precision = _precision_lower_bound(right, answered, z)
                meets = precision >= target
                key = (float(meets), right if meets else precision, precision, high, margin, gate_threshold,
                       -fallback)
                if best_key is None or key > best_key:
                    best_key, chosen = key, replace(candidate, gate_threshold=gate_threshold)
    d = _decide(chosen, keyword, semantic, gate)
    band_width = 0.1
    medium = max(0.05, round(chosen.high_threshold - band_width, 3))  # a medium tier always exists
    for threshold in sorted({*_THRESHOLDS, *(round(0.05 * i, 2) for i in range(1, 6))}, reverse=True):
        if threshold >= medium:
            continue
        band = ~d.matched & ~d.out_of_scope & (d.top >= threshold) & (d.top < threshold + band_width)
        if band.any() and (d.correct & in_scope)[band].mean() < _MEDIUM_PRECISION:
            break
        medium = threshold
    return replace(chosen, medium_threshold=medium, gate=gate_model)


def _task_threshold_rows(target: float, z: float) -> int | None:
    """The fewest answers for one task that can show `target` precision by the Wilson bound of
    `_precision_lower_bound` (all of them right): below that, a task's own threshold is noise.
    None when no count can (a target of 1)."""
    if target >= 1.0:
        return None
    return math.ceil(z * z * target / (1.0 - target))


def _fit_task_thresholds(config: MatcherConfig, keyword: _Path, semantic: _Path | None, in_scope: BoolArray,
                         target: float, weights: FloatArray, gate: FloatArray, labelled: BoolArray,
                         ids: Sequence[str], *, z: float) -> tuple[MatcherConfig, dict[str, Any]]:
    """Per-task ``high`` thresholds, where the labelled data supports them; the global one elsewhere.

    The rule: a task gets its own threshold when at least `_task_threshold_rows(target, z)` labelled
    queries (33 at 97% and z = 1) would be answered with it at the lowest threshold (``medium``), the other
    conditions of a ``high`` answer met (margin, gate, no out-of-scope profile ahead). Its threshold
    is then chosen among those answers as the global one is: most answers right with the Wilson
    bound of precision at `target`, else the most precise; ties go to the stricter threshold.
    Returns the config and the report of the rule, the tasks that met it and their thresholds.
    """
    needed = _task_threshold_rows(target, z)
    loose = _decide(replace(config, high_threshold=config.medium_threshold, task_high_thresholds={}),
                    keyword, semantic, gate, ids)
    answers = loose.matched & labelled
    right_if_answered = loose.correct & in_scope
    thresholds = sorted({config.medium_threshold, *(t for t in _THRESHOLDS if t >= config.medium_threshold)})
    fitted: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    for position in sorted(set(loose.predicted[answers].tolist())):
        mine = answers & (loose.predicted == position)
        if needed is None or int(mine.sum()) < needed:
            continue
        best: tuple[Any, ...] | None = None
        for threshold in thresholds:
            chosen = mine & (loose.top >= threshold)
            answered, right = float(weights[chosen].sum()), float(weights[chosen & right_if_answered].sum())
            precision = _precision_lower_bound(right, answered, z)
            meets = precision >= target
            key = (float(meets), right if meets else precision, precision, threshold)
            if best is None or key > best:
                best = key
        assert best is not None
        threshold = float(best[3])
        details[ids[position]] = {"answers": int(mine.sum()), "threshold": threshold,
                                  "precision_bound": round(float(best[2]), 4), "target_met": bool(best[0])}
        if threshold != config.high_threshold:
            fitted[ids[position]] = threshold
    report = {"rule": f"a task's own high threshold needs at least {needed} labelled answers for it "
                      f"(the fewest that can show {target:.0%} precision by the Wilson bound)"
              if needed is not None else "none: no count of answers can show a precision target of 1",
              "min_answers": needed, "tasks": details}
    return replace(config, task_high_thresholds=dict(sorted(fitted.items()))), report


def _report(config: MatcherConfig, keyword: _Path, semantic: _Path | None,
            labels: IntArray, gate: FloatArray, profiles_ids: list[str], rows: BoolArray,
            weights: FloatArray) -> dict[str, Any]:
    """Precision and recall of ``high`` answers at the chosen operating point, overall and per task,
    on the `rows` reported (the labelled queries, not the catalog's own texts). The overall precision
    weighs out-of-scope answers as the fit does (`weights`); per task, every answer counts one."""
    full = _decide(config, keyword, semantic, gate, profiles_ids)
    d = _Decisions(*(np.asarray(getattr(full, f.name))[rows] for f in dataclasses.fields(_Decisions)))
    labels, weights = labels[rows], weights[rows]
    in_scope = labels >= 0
    right = d.matched & d.correct & in_scope
    answered = int(d.matched.sum())
    answered_weight = float(weights[d.matched].sum())
    per_task: dict[str, dict[str, float | int | None]] = {}
    for task_position in sorted(set(labels[in_scope].tolist()) | set(d.predicted[d.matched].tolist())):
        support = int((labels == task_position).sum())
        claimed = int((d.matched & (d.predicted == task_position)).sum())
        hits = int((right & (labels == task_position)).sum())
        per_task[profiles_ids[task_position]] = {
            "high_threshold": config.high_threshold_for(profiles_ids[task_position]),
            "support": support,
            "matched": claimed,
            "precision": round(hits / claimed, 4) if claimed else None,
            "recall": round(hits / support, 4) if support else None,
        }
    return {
        "precision_high": round(float(weights[right].sum()) / answered_weight, 4) if answered else None,
        "recall_high": round(int(right.sum()) / max(1, int(in_scope.sum())), 4),
        "out_of_scope_recall": (round(float((~d.matched[~in_scope]).mean()), 4)
                                if (~in_scope).any() else None),
        "top1_accuracy": round(float(d.correct[in_scope].mean()), 4),
        "semantic_share": round(float(d.semantic.mean()), 4),
        "per_task": per_task,
    }
