"""Calibration curve, confidence tiers and ambiguity."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from matcher import MatcherConfig
from matcher.calibration import (
    PathSummary,
    calibrate,
    clears_high,
    confidence_tiers,
    decide,
    is_ambiguous,
    keyword_is_confident,
    summarize,
)

CONFIG = MatcherConfig(high_threshold=0.6, medium_threshold=0.3, high_margin=0.1, ambiguity_margin=0.05)


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=50),
       st.floats(min_value=0.5, max_value=200), st.floats(min_value=-50, max_value=50),
       st.floats(min_value=0, max_value=1))
def test_calibration_keeps_the_order_stays_bounded_and_is_rounded(raw: list[float], slope: float,
                                                                  bias: float, coverage: float) -> None:
    values = np.sort(np.array(raw))
    scores = calibrate(values, slope=slope, null_bias=bias, null_coverage=-2.0, coverage=coverage,
                       decimals=4)
    assert np.all(np.diff(scores) >= 0)
    assert np.all((scores >= 0) & (scores <= 1))
    assert scores.sum() <= 1.0 + 1e-3
    assert np.array_equal(scores, np.round(scores, 4))


def test_the_no_match_option_takes_mass_when_its_utility_rises() -> None:
    raw = np.array([0.1, 0.2, 0.6])
    confident = calibrate(raw, slope=20, null_bias=0.0, decimals=6)
    doubtful = calibrate(raw, slope=20, null_bias=12.0, decimals=6)
    assert np.all(doubtful < confident)
    assert list(np.argsort(-doubtful)) == list(np.argsort(-confident))


def test_near_equal_candidates_share_the_probability() -> None:
    scores = calibrate(np.array([0.80, 0.79, 0.0]), slope=30, null_bias=0.0, decimals=4)
    assert scores[0] < 0.6
    assert scores[1] < scores[0]


def test_rows_are_queries_with_their_own_coverage() -> None:
    raw = np.array([[0.5, 0.1], [0.5, 0.1]])
    scores = calibrate(raw, slope=10, null_bias=3.0, null_coverage=-4.0, coverage=np.array([0.0, 1.0]),
                       decimals=6)
    assert scores[1, 0] > scores[0, 0]
    np.testing.assert_allclose(scores[0], calibrate(raw[0], slope=10, null_bias=3.0, decimals=6))


def _row(top: float, second: float = 0.0, unsupported: float = -1.0, *, known: bool = True) -> PathSummary:
    """A one-query summary: task 0 leads at `top`, task 1 follows at `second`, profile 2 is out of scope."""
    return summarize(np.array([top, second, max(unsupported, 0.0)]), np.array([True, True, False]),
                     np.array([False, False, unsupported >= 0]), np.array([known]))


def _matched(summary: PathSummary, **options: object) -> bool:
    return bool(decide(CONFIG, summary, None, **options).matched[0])  # type: ignore[arg-type]


def test_high_needs_both_the_threshold_and_the_margin() -> None:
    assert _matched(_row(0.9, 0.5))
    assert not _matched(_row(0.9, 0.85))
    assert not _matched(_row(0.59, 0.1))
    assert _matched(_row(0.9))


def test_the_lead_is_rounded_before_the_margin_is_checked() -> None:
    config = MatcherConfig(high_threshold=0.3, medium_threshold=0.1, high_margin=0.2, ambiguity_margin=0.05)
    assert 0.3 - 0.1 < 0.2  # float noise the decision must not see
    assert bool(decide(config, _row(0.3, 0.1), None).matched[0])
    assert bool(clears_high(np.array([0.3]), np.array([0.1]), 0.3, margin=0.2, decimals=4)[0])


def test_an_out_of_scope_leader_unknown_words_or_the_gate_refuse_a_match() -> None:
    assert not _matched(_row(0.7, 0.0, unsupported=0.8))
    assert bool(decide(CONFIG, _row(0.7, 0.0, unsupported=0.8), None).out_of_scope[0])
    assert _matched(_row(0.7, 0.0, unsupported=0.2))
    assert not _matched(_row(0.9, known=False))
    gated = MatcherConfig(high_threshold=0.6, medium_threshold=0.3, high_margin=0.1, gate_threshold=0.5)
    assert not bool(decide(gated, _row(0.9), None, gate=np.array([0.1])).matched[0])
    assert bool(decide(gated, _row(0.9), None, gate=np.array([0.9])).matched[0])


def test_per_task_thresholds_apply_to_the_leading_task() -> None:
    assert not _matched(_row(0.7), high_thresholds=np.array([0.8, 0.5, 0.5]))
    assert _matched(_row(0.7), high_thresholds=np.array([0.65, 0.9, 0.9]))


def test_the_keyword_path_answers_alone_only_when_a_task_leads_confidently() -> None:
    config = MatcherConfig(high_threshold=0.6, medium_threshold=0.3, high_margin=0.1, fallback_threshold=0.8)
    assert bool(keyword_is_confident(config, _row(0.9, 0.1))[0])
    assert not bool(keyword_is_confident(config, _row(0.7, 0.1))[0])
    assert not bool(keyword_is_confident(config, _row(0.9, 0.1, known=False))[0])
    assert not bool(keyword_is_confident(config, _row(0.9, 0.1, unsupported=0.9))[0])
    semantic = _row(0.65, 0.2)
    d = decide(config, _row(0.7, 0.1), semantic)
    assert bool(d.semantic[0]) and float(d.path.top[0]) == 0.65 and bool(d.matched[0])


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=12), st.booleans())
def test_one_row_decides_as_it_does_within_a_batch(scores: list[float], known: bool) -> None:
    values = np.array([scores, scores[::-1]])
    tasks = np.arange(len(scores)) % 3 != 2
    batch = decide(CONFIG, summarize(values, tasks, ~tasks, np.array([known, known])), None)
    for row in range(2):
        alone = decide(CONFIG, summarize(values[row], tasks, ~tasks, np.array([known])), None)
        assert bool(alone.matched[0]) == bool(batch.matched[row])
        assert int(alone.path.first[0]) == int(batch.path.first[row])


@given(st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.5001, 0.9]), min_size=6, max_size=6), min_size=1,
                max_size=5), st.lists(st.booleans(), min_size=6, max_size=6))
def test_the_summary_ranks_tasks_by_score_then_position(rows: list[list[float]], is_task: list[bool]) -> None:
    scores, tasks = np.array(rows), np.array(is_task)
    summary = summarize(scores, tasks, ~tasks, np.ones(len(rows), dtype=bool))
    for row, values in enumerate(rows):
        ranked = sorted(range(6), key=lambda i: (-(values[i] if is_task[i] else -1.0), i))  # the total order
        masked = [values[i] if is_task[i] else -1.0 for i in ranked]
        assert int(summary.first[row]) == ranked[0] and float(summary.top[row]) == masked[0]
        assert float(summary.second[row]) == max(masked[1], 0.0)
        outside = [values[i] for i in range(6) if not is_task[i]]
        assert float(summary.unsupported[row]) == (max(outside) if outside else -1.0)


def test_tiers_follow_the_decision() -> None:
    assert confidence_tiers([0.9, 0.5], CONFIG, leader_high=True) == ["high", "medium"]
    assert confidence_tiers([0.9, 0.1], CONFIG, leader_high=False) == ["medium", "low"]
    assert confidence_tiers([0.2, 0.1], CONFIG, leader_high=False) == ["low", "low"]


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20), st.booleans())
def test_tiers_never_rise_as_scores_fall(scores: list[float], leader_high: bool) -> None:
    ordered = sorted(scores, reverse=True)
    rank = {"low": 0, "medium": 1, "high": 2}
    tiers = [rank[t] for t in confidence_tiers(ordered, CONFIG, leader_high=leader_high)]
    assert tiers == sorted(tiers, reverse=True)
    assert tiers.count(2) <= 1


def test_ambiguity_needs_a_plausible_leader_and_a_close_runner_up() -> None:
    assert is_ambiguous([0.7, 0.68], CONFIG)
    assert not is_ambiguous([0.7, 0.6], CONFIG)
    assert not is_ambiguous([0.1, 0.1], CONFIG)
    assert not is_ambiguous([0.9], CONFIG)
