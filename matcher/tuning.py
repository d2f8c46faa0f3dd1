"""Offline tuning: fit weights, calibration and thresholds of a `MatcherConfig` from labelled queries.

Everything is a deterministic grid or coordinate search over precomputed similarity matrices,
so the same catalog and labelled data always give the same config. Calibration is a maximum-
likelihood fit of the catalog-wide softmax with a "no match" option (`calibration.calibrate`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .calibration import calibrate
from .catalog import Catalog
from .config import FieldWeights, MatcherConfig
from .engine import Matcher, SemanticOption
from .errors import UnknownTaskError
from .keyword import SIGNALS, combine
from .text import normalize

__all__ = ["load_labelled", "tune"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
T = TypeVar("T")
_log = logging.getLogger(__name__)

_WEIGHT_VALUES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
_FUSION_VALUES = tuple(round(0.1 * i, 1) for i in range(11))
_CENTROID_VALUES = (0.0, 0.25, 0.5, 0.75, 1.0)
_THRESHOLDS = (*(round(0.3 + 0.025 * i, 3) for i in range(28)), 0.99)
_MARGINS = tuple(round(0.025 * i, 3) for i in range(13))
_MEDIUM_PRECISION = 0.5
_MIN_IN_SCOPE = 10
_CALIBRATION_BOUNDS = ((0.5, 200.0), (-50.0, 50.0), (-50.0, 50.0))
_CALIBRATION_STEPS = (0.1, 0.02, 0.02)
"""Grid of (slope, null bias, null coverage weight): far coarser than any CPU's rounding noise,
far finer than a change that moves a decision (a slope step of 0.1 moves a score by < 0.002)."""
_GRID_TOLERANCE = 1e-9
_LABELLED_KEYS = frozenset({"text", "task_id", "style", "kind", "note"})


@dataclass(frozen=True)
class _Path:
    """Calibrated scores of every query on one path, reduced to what the decisions need."""

    first: npt.NDArray[np.int64]
    top: FloatArray
    second: FloatArray
    correct: BoolArray
    unsupported: FloatArray
    task_leads: BoolArray
    known_words: BoolArray


def tune(catalog: Catalog, labelled: Iterable[tuple[str, str | None]], *,
         semantic: SemanticOption = "auto", base: MatcherConfig | None = None,
         target_precision: float = 0.97, out_of_scope_share: float | None = 0.25,
         progress: bool = False) -> MatcherConfig:
    """Fit a `MatcherConfig` to `labelled` (text, task id or None for out-of-scope) pairs.

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

    matcher = Matcher(catalog, semantic=semantic, config=base)
    profiles = catalog.profiles()
    position = {p.id: i for i, p in enumerate(profiles)}
    is_task = np.array([p.kind == "task" for p in profiles])
    labels = np.array([position[label] if label is not None else -1 for _, label in pairs])
    in_scope = labels >= 0
    weights_per_query = _query_weights(in_scope, out_of_scope_share)
    texts = [normalize(text) for text, _ in pairs]

    index = matcher._keyword_index()
    signals = {name: np.zeros((len(pairs), len(profiles))) for name in SIGNALS}
    coverage = np.zeros(len(pairs))
    for row, text in enumerate(_progress(texts, progress, "keyword signals")):
        repaired = index.repair(text)[0]
        coverage[row] = index.coverage(repaired)
        for name, values in index.components(text).items():
            signals[name][row] = values

    weights = _fit_weights(signals, base.field_weights, labels, is_task)
    keyword_raw = combine(signals, weights)
    k_slope, k_bias, k_coverage = _fit_calibration(
        keyword_raw, coverage, labels, is_task, weights_per_query,
        (base.keyword_slope, base.keyword_null_bias, base.keyword_null_coverage))
    config = replace(base, field_weights=weights, keyword_slope=k_slope, keyword_null_bias=k_bias,
                     keyword_null_coverage=k_coverage, tuning=None)
    keyword_scores = calibrate(keyword_raw, slope=k_slope, null_bias=k_bias, null_coverage=k_coverage,
                               coverage=coverage, decimals=base.score_decimals)
    keyword_path = _reduce(keyword_scores, labels, is_task, coverage >= base.keyword_min_coverage)

    semantic_path: _Path | None = None
    semantic_index = matcher._semantic_index()
    if semantic_index is not None:
        vectors = np.vstack([semantic_index.encode([text]) for text in _progress(texts, progress, "embeddings")])
        centroid, best = semantic_index.components(vectors)
        centroid_weight, fusion = _fit_fusion(semantic_index.mix, centroid, best, keyword_raw,
                                              labels, is_task)
        fused = fusion * keyword_raw + (1.0 - fusion) * np.round(
            semantic_index.mix(centroid, best, centroid_weight), 6)
        s_slope, s_bias, s_coverage = _fit_calibration(
            fused, coverage, labels, is_task, weights_per_query,
            (base.semantic_slope, base.semantic_null_bias, base.semantic_null_coverage))
        config = replace(config, semantic_fusion=fusion, semantic_centroid_weight=centroid_weight,
                         semantic_slope=s_slope, semantic_null_bias=s_bias,
                         semantic_null_coverage=s_coverage)
        semantic_scores = calibrate(fused, slope=s_slope, null_bias=s_bias, null_coverage=s_coverage,
                                    coverage=coverage, decimals=base.score_decimals)
        semantic_path = _reduce(semantic_scores, labels, is_task, np.ones(len(pairs), dtype=bool))

    config = _fit_thresholds(config, keyword_path, semantic_path, in_scope, target_precision,
                             weights_per_query, progress=progress)
    decisions = _decide(config, keyword_path, semantic_path)
    right = float(weights_per_query[decisions.matched & decisions.correct & in_scope].sum())
    answered = float(weights_per_query[decisions.matched].sum())
    target_met = _precision_lower_bound(right, answered) >= target_precision
    if not target_met:
        warnings.warn(
            f"no setting reaches {target_precision:.0%} precision for high answers on these labelled "
            "queries (one-sided 95% bound); the most precise setting was kept, so `matched` will be "
            "wrong more often than the target. Add labelled data, enrich the catalog profiles or "
            "enable the semantic backstop.", RuntimeWarning, stacklevel=2)
    report = _report(config, keyword_path, semantic_path, labels, profiles_ids=[p.id for p in profiles])
    report.update({
        "target_precision": target_precision,
        "target_met": bool(target_met),
        "out_of_scope_share": out_of_scope_share,
        "queries": len(pairs),
        "in_scope": int(in_scope.sum()),
        "out_of_scope": int((~in_scope).sum()),
        "catalog_fingerprint": catalog.fingerprint,
        "semantic_model": None if semantic_index is None else matcher._embedder.model_id  # type: ignore[union-attr]
    })
    return replace(config, tuning=report)


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


def _ranking_quality(raw: FloatArray, labels: IntArray, is_task: BoolArray) -> tuple[float, float]:
    """(top-1 accuracy, mean reciprocal rank) over in-scope queries, tasks only, ties by index."""
    scores = np.round(np.where(is_task, raw, -1.0), 6)
    rows = np.flatnonzero(labels >= 0)
    if not len(rows):
        return 0.0, 0.0
    truth = scores[rows, labels[rows]][:, None]
    above = (scores[rows] > truth).sum(axis=1)
    tied_before = ((scores[rows] == truth) & (np.arange(scores.shape[1]) < labels[rows][:, None])).sum(axis=1)
    rank = above + tied_before
    return float(np.mean(rank == 0)), float(np.mean(1.0 / (rank + 1)))


def _fit_weights(signals: dict[str, FloatArray], start: FieldWeights, labels: IntArray,
                 is_task: BoolArray) -> FieldWeights:
    """Coordinate ascent over signal weights on top-1 accuracy (then MRR); strict gains only."""
    current = start
    best = _ranking_quality(combine(signals, current), labels, is_task)
    for _ in range(4):
        improved = False
        for name in SIGNALS:
            for value in _WEIGHT_VALUES:
                candidate = replace(current, **{name: value})
                if sum(candidate.as_dict().values()) <= 0:
                    continue
                quality = _ranking_quality(combine(signals, candidate), labels, is_task)
                if quality > best:
                    best, current, improved = quality, candidate, True
        if not improved:
            break
    return current


def _fit_fusion(mix: Any, centroid: FloatArray, best: FloatArray, keyword_raw: FloatArray,
                labels: IntArray, is_task: BoolArray) -> tuple[float, float]:
    """Embedding aggregation and keyword/embedding fusion weight with the best ranking."""
    choice, top = (0.5, 0.5), (-1.0, -1.0)
    for centroid_weight in _CENTROID_VALUES:
        similarity = np.round(mix(centroid, best, centroid_weight), 6)
        for fusion in _FUSION_VALUES:
            quality = _ranking_quality(fusion * keyword_raw + (1 - fusion) * similarity, labels, is_task)
            if quality > top:
                top, choice = quality, (centroid_weight, fusion)
    return choice


def _top_task(raw: FloatArray, labels: IntArray, is_task: BoolArray) -> tuple[FloatArray, BoolArray]:
    scores = np.where(is_task, raw, -1.0)
    top = np.argmax(scores, axis=1)
    return raw[np.arange(len(raw)), top], top == labels


def _query_weights(in_scope: BoolArray, out_of_scope_share: float | None) -> FloatArray:
    """Per-query likelihood weights giving the out-of-scope queries `out_of_scope_share` of the total."""
    n_in, n_out = int(in_scope.sum()), int((~in_scope).sum())
    if out_of_scope_share is None or n_in == 0 or n_out == 0:
        return np.ones(len(in_scope))
    out_weight = out_of_scope_share / (1.0 - out_of_scope_share) * n_in / n_out
    return np.where(in_scope, 1.0, out_weight)


def _fit_calibration(raw: FloatArray, coverage: FloatArray, labels: IntArray, is_task: BoolArray,
                     weights: FloatArray, start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Weighted maximum-likelihood (slope, null bias, null coverage weight) of the catalog-wide softmax.

    An in-scope query's likelihood is its task's probability; an out-of-scope query's is the
    probability of "no match" plus that of every out-of-scope profile. L-BFGS from `start` is
    deterministic; a failed fit keeps `start`.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    rows = np.arange(len(raw))
    outside = labels < 0

    def loss(params: FloatArray) -> float:
        slope, bias, weight = (float(v) for v in params)
        logits = slope * raw
        null = bias + weight * coverage
        log_total = logsumexp(np.column_stack([null, logits]), axis=1)
        masked = np.where(~is_task, logits, -np.inf)
        log_outside = logsumexp(np.column_stack([null, masked]), axis=1)
        log_right = np.where(outside, log_outside, logits[rows, np.maximum(labels, 0)])
        return float(np.sum(weights * (log_total - log_right)) / weights.sum())

    result = minimize(loss, np.asarray(start, dtype=np.float64), method="L-BFGS-B",
                      bounds=_CALIBRATION_BOUNDS)
    if not result.success and not np.isfinite(result.fun):
        return start
    return _settle_on_grid(loss, result.x)


def _settle_on_grid(loss: Any, optimum: FloatArray) -> tuple[float, float, float]:
    """Round an optimum to the calibration grid, then walk downhill on the grid until no neighbour is lower.

    L-BFGS's last digits depend on the CPU's floating-point kernels; a grid point reached by
    steepest descent over the 26 neighbours does not, because a step is taken only when it lowers
    the loss by more than `_GRID_TOLERANCE` and near-ties go to the first neighbour in a fixed order.
    """
    steps = np.asarray(_CALIBRATION_STEPS)
    low = np.asarray([b[0] for b in _CALIBRATION_BOUNDS])
    high = np.asarray([b[1] for b in _CALIBRATION_BOUNDS])

    def at(point: IntArray) -> float:
        return float(loss(np.clip(point * steps, low, high)))

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
    tasks = np.where(is_task, scores, -1.0)
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -tasks), axis=1)
    first, second = order[:, 0], order[:, 1] if scores.shape[1] > 1 else order[:, 0]
    rows = np.arange(len(scores))
    top = tasks[rows, first]
    runner = tasks[rows, second] if scores.shape[1] > 1 else np.zeros(len(scores))
    unsupported = (np.where(~is_task, scores, -1.0).max(axis=1) if (~is_task).any()
                   else np.full(len(scores), -1.0))
    return _Path(first=first, top=top, second=np.maximum(runner, 0.0), correct=first == labels,
                 unsupported=unsupported, task_leads=top >= unsupported, known_words=known_words)


@dataclass(frozen=True)
class _Decisions:
    predicted: npt.NDArray[np.int64]
    matched: BoolArray
    correct: BoolArray
    top: FloatArray
    out_of_scope: BoolArray
    semantic: BoolArray


def _decide(config: MatcherConfig, keyword: _Path, semantic: _Path | None) -> _Decisions:
    """What the engine's cascade answers for every query under `config` (vectorized)."""
    h, m, medium = config.high_threshold, config.high_margin, config.medium_threshold
    lead_kw = np.round(keyword.top - keyword.second, config.score_decimals)
    use_keyword = (keyword.task_leads & (keyword.top > keyword.unsupported) & keyword.known_words
                   & (keyword.top >= config.fallback_threshold) & (lead_kw >= m))
    if semantic is None:
        use_keyword = np.ones_like(use_keyword)
        semantic = keyword
    top = np.where(use_keyword, keyword.top, semantic.top)
    second = np.where(use_keyword, keyword.second, semantic.second)
    unsupported = np.where(use_keyword, keyword.unsupported, semantic.unsupported)
    correct = np.where(use_keyword, keyword.correct, semantic.correct)
    known_words = np.where(use_keyword, keyword.known_words, semantic.known_words)
    out_of_scope = (unsupported >= medium) & (unsupported > top)
    lead = np.round(top - second, config.score_decimals)
    matched = ~out_of_scope & known_words & (top >= h) & (lead >= m)
    predicted = np.where(use_keyword, keyword.first, semantic.first)
    return _Decisions(predicted, matched, correct, top, out_of_scope, ~use_keyword)


def _precision_lower_bound(right: float, answered: float, z: float = 1.645) -> float:
    """Wilson score lower bound of precision: a target met by it tends to hold on unseen queries."""
    if answered == 0:
        return 0.0
    p = right / answered
    denominator = 1 + z * z / answered
    centre = p + z * z / (2 * answered)
    spread = z * math.sqrt(p * (1 - p) / answered + z * z / (4 * answered * answered))
    return (centre - spread) / denominator


def _fit_thresholds(config: MatcherConfig, keyword: _Path, semantic: _Path | None,
                    in_scope: BoolArray, target: float, weights: FloatArray, *,
                    progress: bool = False) -> MatcherConfig:
    """Pick (fallback, high, margin) answering most queries right at `target` precision, then medium.

    Precision is judged by its one-sided 95% Wilson lower bound (z = 1.645, chosen by two-fold
    cross-validation on the tuning split), so a target reached on the tuning queries is not an
    artefact of a few lucky answers, with each query weighted as in the calibration fit, so a
    false match on an out-of-scope query costs what `out_of_scope_share` says; if no setting reaches it, the most
    precise one wins. Ties go to the stricter threshold and margin and to the lower fallback
    threshold, which leaves more queries to the fast keyword path.

    ``medium`` extends down while unmatched answers scoring in each 0.1-wide band below it are
    still right at least half of the time.
    """
    best_key: tuple[float, ...] | None = None
    chosen = config
    fallbacks = (*_THRESHOLDS, 1.0) if semantic is not None else (config.fallback_threshold,)
    grid = list(itertools.product(_THRESHOLDS, _MARGINS))
    for high, margin in _progress(grid, progress, "thresholds", unit="setting"):
        for fallback in (f for f in fallbacks if f >= high):
            candidate = replace(config, high_threshold=high, high_margin=margin,
                                ambiguity_margin=margin, fallback_threshold=fallback,
                                medium_threshold=min(config.medium_threshold, high))
            d = _decide(candidate, keyword, semantic)
            answered = float(weights[d.matched].sum())
            right = float(weights[d.matched & d.correct & in_scope].sum())
            precision = _precision_lower_bound(right, answered)
            meets = precision >= target
            key = (float(meets), right if meets else precision, high, margin, -fallback)
            if best_key is None or key > best_key:
                best_key, chosen = key, candidate
    d = _decide(chosen, keyword, semantic)
    medium = chosen.high_threshold
    band_width = 0.1
    for threshold in sorted({*_THRESHOLDS, *(round(0.05 * i, 2) for i in range(1, 6))}, reverse=True):
        if threshold > chosen.high_threshold:
            continue
        band = ~d.matched & ~d.out_of_scope & (d.top >= threshold) & (d.top < threshold + band_width)
        if band.any() and (d.correct & in_scope)[band].mean() < _MEDIUM_PRECISION:
            break
        medium = threshold
    return replace(chosen, medium_threshold=medium)


def _report(config: MatcherConfig, keyword: _Path, semantic: _Path | None,
            labels: IntArray, profiles_ids: list[str]) -> dict[str, Any]:
    """Precision and recall of ``high`` answers at the chosen operating point, overall and per task."""
    d = _decide(config, keyword, semantic)
    in_scope = labels >= 0
    right = d.matched & d.correct & in_scope
    answered = int(d.matched.sum())
    per_task: dict[str, dict[str, float | int | None]] = {}
    for task_position in sorted(set(labels[in_scope].tolist()) | set(d.predicted[d.matched].tolist())):
        support = int((labels == task_position).sum())
        claimed = int((d.matched & (d.predicted == task_position)).sum())
        hits = int((right & (labels == task_position)).sum())
        per_task[profiles_ids[task_position]] = {
            "support": support,
            "matched": claimed,
            "precision": round(hits / claimed, 4) if claimed else None,
            "recall": round(hits / support, 4) if support else None,
        }
    return {
        "precision_high": round(int(right.sum()) / answered, 4) if answered else None,
        "recall_high": round(int(right.sum()) / max(1, int(in_scope.sum())), 4),
        "out_of_scope_recall": (round(float((~d.matched[~in_scope]).mean()), 4)
                                if (~in_scope).any() else None),
        "top1_accuracy": round(float(d.correct[in_scope].mean()), 4),
        "semantic_share": round(float(d.semantic.mean()), 4),
        "per_task": per_task,
    }
