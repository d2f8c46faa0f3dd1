"""Calibration curve, confidence tiers and ambiguity."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from matcher import MatcherConfig
from matcher.calibration import calibrate, confidence_tiers, is_ambiguous

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


def test_high_needs_both_the_threshold_and_the_margin() -> None:
    assert confidence_tiers([0.9, 0.5], CONFIG) == ["high", "medium"]
    assert confidence_tiers([0.9, 0.85], CONFIG) == ["medium", "medium"]
    assert confidence_tiers([0.59, 0.1], CONFIG) == ["medium", "low"]
    assert confidence_tiers([0.9], CONFIG) == ["high"]
    assert confidence_tiers([0.9, 0.1], CONFIG, allow_high=False) == ["medium", "low"]
    assert confidence_tiers([0.2, 0.1], CONFIG) == ["low", "low"]


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20))
def test_tiers_never_rise_as_scores_fall(scores: list[float]) -> None:
    ordered = sorted(scores, reverse=True)
    rank = {"low": 0, "medium": 1, "high": 2}
    tiers = [rank[t] for t in confidence_tiers(ordered, CONFIG)]
    assert tiers == sorted(tiers, reverse=True)
    assert tiers.count(2) <= 1


def test_ambiguity_needs_a_plausible_leader_and_a_close_runner_up() -> None:
    assert is_ambiguous([0.7, 0.68], CONFIG)
    assert not is_ambiguous([0.7, 0.6], CONFIG)
    assert not is_ambiguous([0.1, 0.1], CONFIG)
    assert not is_ambiguous([0.9], CONFIG)
