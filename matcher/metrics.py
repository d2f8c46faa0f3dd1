"""Metric functions over per-query predictions; pure, deterministic and unit-tested.

Used by `task-matcher evaluate` (`matcher.evaluation`), the benchmarks and the tuning notebook.

A `Prediction` is what any system (our engine or a peer) said about one labelled query: its
ranking, the top score, whether it *accepted* the top task as the answer (our engine:
``matched``; a peer: its top score clears a threshold tuned on the tuning split), and for our
engine the confidence tier, ambiguity flag and deciding path.

Definitions used throughout (N = all queries, N_in = in-scope, N_oos = out-of-scope):

* top-1 accuracy, recall@k: over in-scope queries, ignoring acceptance.
* in-scope accuracy: in-scope queries whose top task is accepted *and* right, over N_in
  (a rejected in-scope query counts as wrong), as in Larson et al. 2019.
* out-of-scope recall: out-of-scope queries that were not accepted, over N_oos.
* tier precision: queries whose top candidate has the tier and is right, over those in the
  tier (an out-of-scope query is never right); tier coverage: queries in the tier over N.
* operating curve: in-scope accuracy and out-of-scope recall at every threshold on the top
  score, which compares two systems at the same point of the trade-off between the two.
* per kind: the same figures within each kind of request a corpus labels (`per_kind_scores`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .results import TaskMatch

__all__ = [
    "TIERS",
    "KindScores",
    "Prediction",
    "TaskScores",
    "TierStats",
    "accepted_accuracy",
    "accuracy_at_oos_recall",
    "accuracy_at_precision",
    "ambiguity_rate",
    "balanced_threshold",
    "confused_pairs",
    "expected_calibration_error",
    "latency_summary",
    "oos_recall",
    "oos_recall_at_accuracy",
    "operating_curve",
    "path_share",
    "per_kind_scores",
    "per_task_scores",
    "precision_at_accuracy",
    "precision_curve",
    "precision_threshold",
    "prediction",
    "recall_at_k",
    "reliability_curve",
    "threshold_sweep",
    "tier_stats",
    "top1_accuracy",
]

TIERS = ("high", "medium", "low")


@dataclass(frozen=True)
class Prediction:
    """One system's answer to one labelled query."""

    gold: str | None
    ranking: tuple[str, ...]
    top_score: float
    accepted: bool
    tier: str | None = None
    ambiguous: bool | None = None
    path: str | None = None
    eligible: bool = True
    """False when the system rules the query out whatever its threshold (a peer whose best profile
    is an out-of-scope one)."""

    @property
    def correct(self) -> bool:
        """The top-ranked task is the labelled one (never true for an out-of-scope query)."""
        return self.gold is not None and bool(self.ranking) and self.ranking[0] == self.gold

    @property
    def answer(self) -> str | None:
        """The task the system commits to: its top task if accepted, else None (no match)."""
        return self.ranking[0] if self.accepted and self.ranking else None


def prediction(gold: str | None, result: TaskMatch) -> Prediction:
    """Our engine's answer as a `Prediction`: its ranking, top score and tier; accepted when `matched`."""
    top = result.candidates[0] if result.candidates else None
    return Prediction(
        gold=gold,
        ranking=tuple(c.task_id for c in result.candidates),
        top_score=top.score if top is not None else 0.0,
        accepted=result.matched,
        tier=top.confidence if top is not None else None,
        ambiguous=result.ambiguous,
        path=result.matcher,
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def top1_accuracy(preds: Sequence[Prediction]) -> float:
    """Share of in-scope queries whose top-ranked task is right (acceptance ignored)."""
    in_scope = [p for p in preds if p.gold is not None]
    return _ratio(sum(p.correct for p in in_scope), len(in_scope))


def recall_at_k(preds: Sequence[Prediction], k: int = 5) -> float:
    """Share of in-scope queries whose labelled task is among the first `k` ranked."""
    in_scope = [p for p in preds if p.gold is not None]
    return _ratio(sum(p.gold in p.ranking[:k] for p in in_scope), len(in_scope))


def accepted_accuracy(preds: Sequence[Prediction]) -> float:
    """Share of in-scope queries answered (accepted) with the right task."""
    in_scope = [p for p in preds if p.gold is not None]
    return _ratio(sum(p.accepted and p.correct for p in in_scope), len(in_scope))


def oos_recall(preds: Sequence[Prediction]) -> float:
    """Share of out-of-scope queries given no match."""
    oos = [p for p in preds if p.gold is None]
    return _ratio(sum(not p.accepted for p in oos), len(oos))


@dataclass(frozen=True)
class TierStats:
    """Queries whose top candidate had one tier: how many, how many right, share of all."""

    count: int
    correct: int
    precision: float
    coverage: float


def tier_stats(preds: Sequence[Prediction]) -> dict[str, TierStats]:
    """Precision and coverage of each confidence tier (predictions without a tier are skipped)."""
    total = len(preds)
    out = {}
    for tier in TIERS:
        members = [p for p in preds if p.tier == tier]
        correct = sum(p.correct for p in members)
        out[tier] = TierStats(len(members), correct, _ratio(correct, len(members)),
                              _ratio(len(members), total))
    return out


def ambiguity_rate(preds: Sequence[Prediction]) -> float:
    """Share of queries flagged ambiguous (predictions without the flag are skipped)."""
    flagged = [p.ambiguous for p in preds if p.ambiguous is not None]
    return _ratio(sum(flagged), len(flagged))


def path_share(preds: Sequence[Prediction], path: str) -> float:
    """Share of queries decided by `path` (e.g. ``"semantic"``)."""
    return _ratio(sum(p.path == path for p in preds), len(preds))


@dataclass(frozen=True)
class TaskScores:
    """Per-task precision / recall of committed answers (no-match counts as no answer)."""

    task_id: str
    support: int
    answered: int
    precision: float
    recall: float

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return 0.0
        return 2 * p * r / (p + r)


def per_task_scores(preds: Sequence[Prediction]) -> list[TaskScores]:
    """Precision and recall of each task that is labelled or answered, sorted by task id."""
    support = Counter(p.gold for p in preds if p.gold is not None)
    answered = Counter(p.answer for p in preds if p.answer is not None)
    hits = Counter(p.gold for p in preds if p.answer is not None and p.answer == p.gold)
    tasks = sorted(set(support) | set(answered))
    return [TaskScores(t, support[t], answered[t], _ratio(hits[t], answered[t]),
                       _ratio(hits[t], support[t])) for t in tasks]


@dataclass(frozen=True)
class KindScores:
    """One kind of request, in scope or out of scope: how many, and how a system did on them.

    In-scope figures are NaN for an out-of-scope kind, and OOS recall for an in-scope one.
    """

    kind: str
    in_scope: bool
    count: int
    top1: float
    answered_right: float
    precision: float
    oos_recall: float


def per_kind_scores(preds: Sequence[Prediction], kinds: Sequence[str | None]) -> list[KindScores]:
    """Figures per (scope, kind): in-scope kinds first, then out-of-scope ones, each by name.

    In scope: top-1 accuracy, share answered right (`accepted_accuracy`) and precision of the
    answers committed to (accepted and right over accepted). Out of scope: share not accepted.
    A query without a kind counts under ``"unlabelled"``.
    """
    if len(preds) != len(kinds):
        raise ValueError(f"{len(preds)} predictions but {len(kinds)} kinds")
    groups: dict[tuple[bool, str], list[Prediction]] = {}
    for p, kind in zip(preds, kinds, strict=True):
        groups.setdefault((p.gold is not None, kind or "unlabelled"), []).append(p)
    out = []
    for (in_scope, kind), members in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1])):
        answered = [p for p in members if p.accepted]
        out.append(KindScores(
            kind=kind, in_scope=in_scope, count=len(members),
            top1=top1_accuracy(members), answered_right=accepted_accuracy(members),
            precision=_ratio(sum(p.correct for p in answered), len(answered)) if in_scope else math.nan,
            oos_recall=oos_recall(members),
        ))
    return out


def confused_pairs(preds: Sequence[Prediction], n: int = 10) -> list[tuple[str, str, int]]:
    """The `n` most frequent (labelled, top-ranked) pairs among in-scope top-1 errors.

    Ties are broken by the pair's names so the list is deterministic.
    """
    pairs = Counter((p.gold, p.ranking[0]) for p in preds
                    if p.gold is not None and p.ranking and not p.correct)
    ordered = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return [(str(gold), top, count) for (gold, top), count in ordered[:n]]


def reliability_curve(scores: Sequence[float], correct: Sequence[bool], bins: int = 10
                      ) -> list[tuple[float, float, float, int]]:
    """Equal-width bins over [0, 1]: (bin low, mean score, share correct, count), empty bins skipped."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    index = np.minimum((s * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            out.append((b / bins, float(s[mask].mean()), float(c[mask].mean()), int(mask.sum())))
    return out


def expected_calibration_error(scores: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Count-weighted mean |mean score - share correct| over equal-width bins (0 = calibrated)."""
    curve = reliability_curve(scores, correct, bins)
    total = sum(count for *_, count in curve)
    if not total:
        return math.nan
    return sum(count * abs(mean - hit) for _, mean, hit, count in curve) / total


def _descending_groups(scores: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64],
                                                                 npt.NDArray[np.int64]]:
    """Unique values, descending, and for each the number of scores >= it."""
    values, counts = np.unique(scores, return_counts=True)
    values, counts = values[::-1], counts[::-1]
    return values, np.cumsum(counts)


def _between(values: npt.NDArray[np.float64], i: int) -> float:
    """Threshold accepting exactly the scores >= values[i]: midway to the next lower value."""
    if i + 1 < len(values):
        return float((values[i] + values[i + 1]) / 2)
    return -math.inf


def balanced_threshold(scores: Sequence[float], correct: Sequence[bool], in_scope: Sequence[bool],
                       eligible: Sequence[bool] | None = None) -> float:
    """The no-match threshold maximizing in-scope accuracy + out-of-scope recall on this split.

    A query is accepted when it is `eligible` (default: all) and its score is >= the threshold.
    Candidates are every distinct score (each taken midway to the next lower one, so the
    accepted set on this split is exactly the one scored) plus +inf (accept nothing). Ties in
    the objective go to the lowest threshold, i.e. the most answers. Without out-of-scope
    queries the objective is accuracy alone. Returns -inf when accepting everything is best.
    """
    s = np.asarray(scores, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    ins = np.asarray(in_scope, dtype=bool)
    el = np.ones(len(s), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    n_in, n_oos = int(ins.sum()), int((~ins).sum())
    # objective at +inf: nothing accepted, every out-of-scope query rejected
    best_value, best_threshold = (1.0 if n_oos else 0.0), math.inf
    cand = s[el]
    if len(cand) == 0:
        return best_threshold
    values, _ = _descending_groups(cand)
    order = np.argsort(-cand, kind="stable")
    sorted_scores = cand[order]
    right = np.cumsum((ok & ins)[el][order])
    oos_taken = np.cumsum((~ins)[el][order])
    ends = np.searchsorted(-sorted_scores, -values, side="right") - 1
    for i, end in enumerate(ends):
        acc = right[end] / n_in if n_in else 0.0
        rec = (1.0 - oos_taken[end] / n_oos) if n_oos else 0.0
        value = acc + rec
        if value >= best_value - 1e-12:
            best_value, best_threshold = value, _between(values, i)
    return best_threshold


def precision_threshold(scores: Sequence[float], correct: Sequence[bool], target: float = 0.97,
                        eligible: Sequence[bool] | None = None) -> float:
    """The lowest threshold whose accepted answers are right at least `target` of the time here.

    Same candidates and acceptance rule as `balanced_threshold`; +inf when no threshold reaches
    the target.
    """
    s = np.asarray(scores, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    el = np.ones(len(s), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    cand = s[el]
    best = math.inf
    if len(cand) == 0:
        return best
    values, taken = _descending_groups(cand)
    order = np.argsort(-cand, kind="stable")
    right = np.cumsum(ok[el][order])
    ends = np.searchsorted(-cand[order], -values, side="right") - 1
    for i, end in enumerate(ends):
        if right[end] / taken[i] >= target - 1e-12:
            best = _between(values, i)
    return best


def _sweep(preds: Sequence[Prediction]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                                 npt.NDArray[np.float64], int, int]:
    """Right answers, accepted out-of-scope queries and all accepted queries at every threshold.

    Point i accepts the eligible queries whose top score is at least the i-th highest distinct
    score; point 0 accepts nothing. Tied scores are accepted together. Also returns N_in, N_oos.
    """
    scores = np.asarray([p.top_score for p in preds], dtype=np.float64)
    eligible = np.asarray([p.eligible for p in preds], dtype=bool)
    in_scope = np.asarray([p.gold is not None for p in preds], dtype=bool)
    right = np.asarray([p.correct for p in preds], dtype=bool)
    cand = scores[eligible]
    order = np.argsort(-cand, kind="stable")
    values = np.unique(cand)[::-1]
    ends = np.searchsorted(-cand[order], -values, side="right")
    hits = np.concatenate([[0], np.cumsum(right[eligible][order])])[ends]
    taken_oos = np.concatenate([[0], np.cumsum((~in_scope)[eligible][order])])[ends]
    zero = np.zeros(1)
    return (np.concatenate([zero, hits]).astype(np.float64), np.concatenate([zero, taken_oos]).astype(np.float64),
            np.concatenate([zero, ends]).astype(np.float64), int(in_scope.sum()), int((~in_scope).sum()))


def operating_curve(preds: Sequence[Prediction]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """In-scope accuracy and out-of-scope recall at every threshold on the top score.

    Point i accepts the eligible queries whose top score is at least the i-th highest distinct
    score; point 0 accepts nothing (accuracy 0, OOS recall 1). Tied scores are accepted together.
    """
    hits, taken_oos, _, n_in, n_oos = _sweep(preds)
    return hits / max(n_in, 1), 1.0 - taken_oos / max(n_oos, 1)


def accuracy_at_oos_recall(preds: Sequence[Prediction], target: float) -> float:
    """Best in-scope accuracy over the thresholds whose out-of-scope recall is at least `target`."""
    accuracy, recall = operating_curve(preds)
    return float(accuracy[recall >= target - 1e-12].max())


def oos_recall_at_accuracy(preds: Sequence[Prediction], target: float) -> float:
    """Best out-of-scope recall over the thresholds whose in-scope accuracy is at least `target`
    (NaN when no threshold reaches it)."""
    accuracy, recall = operating_curve(preds)
    reached = recall[accuracy >= target - 1e-12]
    return float(reached.max()) if len(reached) else math.nan


def precision_curve(preds: Sequence[Prediction]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Precision of the accepted answers and in-scope accuracy at every threshold (as `operating_curve`).

    Point 0 accepts nothing; its precision is NaN.
    """
    hits, _, taken, n_in, _ = _sweep(preds)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(taken > 0, hits / np.maximum(taken, 1), math.nan)
    return precision, hits / max(n_in, 1)


def accuracy_at_precision(preds: Sequence[Prediction], target: float) -> float:
    """Best in-scope accuracy over the thresholds whose answers are right at least `target` of the time."""
    precision, accuracy = precision_curve(preds)
    reached = accuracy[np.nan_to_num(precision, nan=-1.0) >= target - 1e-12]
    return float(reached.max()) if len(reached) else 0.0


def precision_at_accuracy(preds: Sequence[Prediction], target: float) -> float:
    """Best precision over the thresholds whose in-scope accuracy is at least `target` (NaN if none)."""
    precision, accuracy = precision_curve(preds)
    reached = precision[(accuracy >= target - 1e-12) & ~np.isnan(precision)]
    return float(reached.max()) if len(reached) else math.nan


def threshold_sweep(preds: Sequence[Prediction], thresholds: Sequence[float]
                    ) -> list[tuple[float, float, float, float, float]]:
    """At each threshold t, accepting the top task when its score is >= t: (t, precision of the
    accepted answers, coverage of all queries, in-scope accuracy, out-of-scope recall).

    Precision is NaN where nothing is accepted; an accepted out-of-scope query is a wrong answer.
    """
    scores = np.asarray([p.top_score for p in preds], dtype=np.float64)
    right = np.asarray([p.correct for p in preds], dtype=bool)
    in_scope = np.asarray([p.gold is not None for p in preds], dtype=bool)
    n_in, n_oos = int(in_scope.sum()), int((~in_scope).sum())
    rows = []
    for t in thresholds:
        accepted = scores >= t
        taken = int(accepted.sum())
        rows.append((float(t), _ratio(int((right & accepted).sum()), taken), _ratio(taken, len(preds)),
                     _ratio(int((right & accepted & in_scope).sum()), n_in),
                     _ratio(int((~accepted & ~in_scope).sum()), n_oos)))
    return rows


def latency_summary(latencies_ms: Sequence[float]) -> tuple[float, float, int]:
    """(median, p99, count) in milliseconds; NaNs when there is nothing to summarize."""
    if not latencies_ms:
        return math.nan, math.nan, 0
    values = np.asarray(latencies_ms, dtype=np.float64)
    return float(np.median(values)), float(np.percentile(values, 99)), len(values)
