"""The metric functions (`matcher.metrics`) on inputs whose answers are worked out by hand in the
comments, so a wrong formula fails."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from matcher import metrics
from matcher.metrics import Prediction


def pred(gold: str | None, ranking: Sequence[str], score: float = 0.5, accepted: bool = True,
         **extra: Any) -> Prediction:
    """A `Prediction` in one short line."""
    return Prediction(gold, tuple(ranking), score, accepted, **extra)


# Four in-scope queries and two out-of-scope ones:
#   q1 gold a, ranked a first, accepted       -> top-1 hit, answered right
#   q2 gold b, ranked a then b, accepted      -> top-1 miss, in top-5, answered wrong (as a)
#   q3 gold c, ranked c first, rejected       -> top-1 hit, not answered
#   q4 gold d, ranked x, y (d absent)         -> miss everywhere
#   q5 out of scope, rejected                 -> OOS hit
#   q6 out of scope, accepted as a            -> OOS miss
PREDS = [
    pred("a", ["a", "b"], 0.9, True, tier="high", ambiguous=False, path="keyword"),
    pred("b", ["a", "b"], 0.8, True, tier="high", ambiguous=True, path="semantic"),
    pred("c", ["c", "a"], 0.4, False, tier="medium", ambiguous=False, path="semantic"),
    pred("d", ["x", "y"], 0.2, False, tier="low", ambiguous=False, path="keyword"),
    pred(None, ["a"], 0.1, False, tier="low", ambiguous=False, path="keyword"),
    pred(None, ["a"], 0.7, True, tier="high", ambiguous=True, path="semantic"),
]


def test_accuracy_metrics_match_hand_counts() -> None:
    assert metrics.top1_accuracy(PREDS) == pytest.approx(2 / 4)  # q1, q3
    assert metrics.recall_at_k(PREDS, 5) == pytest.approx(3 / 4)  # q1, q2, q3
    assert metrics.recall_at_k(PREDS, 1) == pytest.approx(2 / 4)
    assert metrics.accepted_accuracy(PREDS) == pytest.approx(1 / 4)  # only q1 is answered right
    assert metrics.oos_recall(PREDS) == pytest.approx(1 / 2)  # q5
    assert metrics.ambiguity_rate(PREDS) == pytest.approx(2 / 6)
    assert metrics.path_share(PREDS, "semantic") == pytest.approx(3 / 6)


def test_metrics_of_an_empty_group_are_nan_not_zero() -> None:
    only_oos = [pred(None, ["a"], accepted=False)]
    assert math.isnan(metrics.top1_accuracy(only_oos))
    assert math.isnan(metrics.oos_recall([pred("a", ["a"])]))


def test_tier_precision_counts_out_of_scope_answers_as_wrong() -> None:
    tiers = metrics.tier_stats(PREDS)
    assert (tiers["high"].count, tiers["high"].correct) == (3, 1)  # q1 right; q2 wrong; q6 is OOS
    assert tiers["high"].precision == pytest.approx(1 / 3)
    assert tiers["high"].coverage == pytest.approx(3 / 6)
    assert (tiers["medium"].count, tiers["medium"].correct) == (1, 1)
    assert (tiers["low"].count, tiers["low"].correct) == (2, 0)


def test_per_task_precision_and_recall() -> None:
    by_task = {s.task_id: s for s in metrics.per_task_scores(PREDS)}
    # "a" was answered three times (q1 right, q2 and q6 wrong) and labelled once (q1)
    assert (by_task["a"].answered, by_task["a"].support) == (3, 1)
    assert by_task["a"].precision == pytest.approx(1 / 3)
    assert by_task["a"].recall == pytest.approx(1.0)
    assert by_task["a"].f1 == pytest.approx(0.5)
    # "b" was labelled once and never answered: recall 0, precision undefined
    assert by_task["b"].recall == 0.0
    assert math.isnan(by_task["b"].precision)
    assert by_task["b"].f1 == 0.0


def test_confused_pairs_are_counted_and_ordered() -> None:
    preds = [pred("b", ["a"]), pred("b", ["a"]), pred("c", ["a"]), pred("a", ["c"]), pred("a", ["a"]),
             pred(None, ["a"])]
    assert metrics.confused_pairs(preds) == [("b", "a", 2), ("a", "c", 1), ("c", "a", 1)]
    assert metrics.confused_pairs(preds, 1) == [("b", "a", 2)]


def test_balanced_threshold_picks_the_best_cut_by_hand() -> None:
    # in-scope right 0.9, 0.8; out-of-scope 0.7; in-scope wrong 0.6; out-of-scope 0.5.
    # accept >= 0.9: 1/3 + 2/2 = 1.33; >= 0.8: 2/3 + 1 = 1.67 (best); >= 0.7: 2/3 + 1/2; none: 1.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [True, True, False, False, False]
    in_scope = [True, True, False, True, False]
    assert metrics.balanced_threshold(scores, correct, in_scope) == pytest.approx(0.75)
    # an out-of-scope profile outranking the 0.7 query makes it ineligible: accepting >= 0.6 then
    # costs no out-of-scope recall but gains nothing either, so >= 0.8 still wins (tie -> lowest
    # cut among equals: >= 0.6 and >= 0.8 both give 2/3 + 1)
    eligible = [True, True, False, True, True]
    assert metrics.balanced_threshold(scores, correct, in_scope, eligible) == pytest.approx(0.55)


def test_balanced_threshold_edges() -> None:
    # no out-of-scope queries: accuracy alone, accepting everything is best
    assert metrics.balanced_threshold([0.3, 0.2], [True, True], [True, True]) == -math.inf
    # only out-of-scope queries: accept nothing
    assert metrics.balanced_threshold([0.3, 0.2], [False, False], [False, False]) == math.inf


def test_precision_threshold_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.6]
    correct = [True, True, False, True]
    # >= 0.8: 2/2; >= 0.7: 2/3; >= 0.6: 3/4
    assert metrics.precision_threshold(scores, correct, 0.97) == pytest.approx(0.75)
    assert metrics.precision_threshold(scores, correct, 0.75) == -math.inf
    assert metrics.precision_threshold([0.5], [False], 0.97) == math.inf


def test_operating_curve_by_hand() -> None:
    # PREDS by top score: 0.9 a right, 0.8 b wrong, 0.7 out-of-scope, 0.4 c right, 0.2 d wrong,
    # 0.1 out-of-scope. Accuracy over 4 in-scope, OOS recall over 2 out-of-scope.
    accuracy, recall = metrics.operating_curve(PREDS)
    assert accuracy.tolist() == pytest.approx([0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5])
    assert recall.tolist() == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0])
    assert metrics.accuracy_at_oos_recall(PREDS, 1.0) == pytest.approx(0.25)
    assert metrics.accuracy_at_oos_recall(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.oos_recall_at_accuracy(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.oos_recall_at_accuracy(PREDS, 0.25) == pytest.approx(1.0)
    assert math.isnan(metrics.oos_recall_at_accuracy(PREDS, 0.75))
    # an ineligible query is never accepted: the out-of-scope 0.7 one no longer costs recall
    ruled_out = [replace(p, eligible=p.top_score != 0.7) for p in PREDS]
    assert metrics.accuracy_at_oos_recall(ruled_out, 1.0) == pytest.approx(0.5)
    # tied scores are accepted together
    tied = [pred("a", ["a"], 0.5), pred(None, ["a"], 0.5)]
    assert metrics.operating_curve(tied)[1].tolist() == [1.0, 0.0]


def test_precision_curve_by_hand() -> None:
    # PREDS by top score: 0.9 right, 0.8 wrong, 0.7 out-of-scope, 0.4 right, 0.2 wrong, 0.1 OOS.
    precision, accuracy = metrics.precision_curve(PREDS)
    assert math.isnan(precision[0])
    assert precision[1:].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 2 / 4, 2 / 5, 2 / 6])
    assert accuracy.tolist() == pytest.approx([0, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5])
    assert metrics.accuracy_at_precision(PREDS, 0.97) == pytest.approx(0.25)
    assert metrics.accuracy_at_precision(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.precision_at_accuracy(PREDS, 0.5) == pytest.approx(0.5)
    assert metrics.precision_at_accuracy(PREDS, 0.25) == pytest.approx(1.0)
    assert math.isnan(metrics.precision_at_accuracy(PREDS, 0.75))
    assert metrics.accuracy_at_precision([pred(None, ["a"], 0.9)], 0.97) == 0.0


def test_calibration_error_and_reliability_curve() -> None:
    # one bin [0.9, 1.0): mean score 0.95, half right -> |0.95 - 0.5| = 0.45
    assert metrics.expected_calibration_error([0.95, 0.95], [True, False]) == pytest.approx(0.45)
    curve = metrics.reliability_curve([0.05, 0.15, 0.15, 1.0], [False, True, False, True], bins=10)
    assert [(round(low, 2), count) for low, _, _, count in curve] == [(0.0, 1), (0.1, 2), (0.9, 1)]
    assert curve[1][2] == pytest.approx(0.5)


def test_latency_summary() -> None:
    median, p99, count = metrics.latency_summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (median, count) == (3.0, 5)
    assert 4.0 < p99 <= 100.0
    assert math.isnan(metrics.latency_summary([])[0])


def test_per_kind_scores_by_hand() -> None:
    preds = [
        pred("a", ["a"], accepted=True),    # terse: right, answered
        pred("b", ["a"], accepted=True),    # terse: wrong, answered
        pred("c", ["c"], accepted=False),   # terse: right at top-1, not answered
        pred("d", ["d"], accepted=True),    # negated in scope: right, answered
        pred(None, ["a"], accepted=False),  # negated out of scope: rejected
        pred(None, ["b"], accepted=True),   # negated out of scope: wrongly answered
        pred(None, ["a"], accepted=False),  # live-data: rejected
        pred(None, ["a"], accepted=False),  # no kind: rejected
    ]
    kinds = ["terse", "terse", "terse", "negated", "negated", "negated", "live-data", None]
    scores = metrics.per_kind_scores(preds, kinds)
    assert [(s.in_scope, s.kind, s.count) for s in scores] == [
        (True, "negated", 1), (True, "terse", 3),
        (False, "live-data", 1), (False, "negated", 2), (False, "unlabelled", 1)]
    terse = scores[1]
    assert terse.top1 == pytest.approx(2 / 3)  # a, c
    assert terse.answered_right == pytest.approx(1 / 3)  # only a
    assert terse.precision == pytest.approx(1 / 2)  # a right, b wrong among the two answered
    assert math.isnan(terse.oos_recall)
    assert (scores[0].top1, scores[0].answered_right, scores[0].precision) == (1.0, 1.0, 1.0)
    negated_oos = scores[3]
    assert negated_oos.oos_recall == pytest.approx(1 / 2)
    assert math.isnan(negated_oos.top1) and math.isnan(negated_oos.precision)
    assert scores[2].oos_recall == scores[4].oos_recall == 1.0
    with pytest.raises(ValueError, match="8 predictions but 7 kinds"):
        metrics.per_kind_scores(preds, kinds[:-1])
