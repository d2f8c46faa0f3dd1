"""Calibration curve, confidence tiers and ambiguity."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from matcher import MatcherConfig
from matcher.calibration import calibrate, confidence_tiers, is_ambiguous

CONFIG = MatcherConfig(high_threshold=0.6, medium_threshold=0.3, high_margin=0.1, ambiguity_margin=0.05)


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=50),
       st.floats(min_value=0.1, max_value=60), st.floats(min_value=-30, max_value=30))
def test_calibration_is_monotone_bounded_and_rounded(raw: list[float], slope: float,
                                                    intercept: float) -> None:
    values = np.sort(np.array(raw))
    scores = calibrate(values, slope=slope, intercept=intercept, decimals=4)
    assert np.all(np.diff(scores) >= 0)
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.array_equal(scores, np.round(scores, 4))


def test_offset_shifts_every_candidate_equally() -> None:
    raw = np.array([0.1, 0.2, 0.5])
    low = calibrate(raw, slope=10, intercept=-3, decimals=6)
    high = calibrate(raw, slope=10, intercept=-3, decimals=6, offset=1.0)
    assert np.all(high > low)
    assert list(np.argsort(-high)) == list(np.argsort(-low))


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
