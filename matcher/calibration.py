"""Map raw similarities to calibrated scores in [0, 1] and assign confidence tiers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .config import MatcherConfig

__all__ = ["HIGH", "LOW", "MEDIUM", "calibrate", "confidence_tiers", "is_ambiguous"]

HIGH, MEDIUM, LOW = "high", "medium", "low"


def calibrate(raw: npt.NDArray[np.float64], *, slope: float, intercept: float, decimals: int,
              offset: float | npt.NDArray[np.float64] = 0.0) -> npt.NDArray[np.float64]:
    """Logistic map of raw scores, rounded so that ranking never sees float noise.

    `offset` adds query-level evidence (such as vocabulary coverage) to the logit: it is the
    same for every candidate of a query, so it moves confidence without changing the ranking.
    """
    z = np.clip(slope * np.asarray(raw, dtype=np.float64) + intercept + offset, -60.0, 60.0)
    return np.round(1.0 / (1.0 + np.exp(-z)), decimals)


def confidence_tiers(scores: Sequence[float], config: MatcherConfig, *,
                     allow_high: bool = True) -> list[str]:
    """Tiers for scores sorted descending.

    Only the leader can be ``high``: it needs the absolute threshold *and* a lead of
    `high_margin` over the runner-up. Everything else is capped at ``medium``, so tiers never
    rise as scores fall.
    """
    tiers = []
    for position, score in enumerate(scores):
        if score >= config.high_threshold and position == 0 and allow_high:
            runner_up = scores[1] if len(scores) > 1 else 0.0
            tiers.append(HIGH if score - runner_up >= config.high_margin else MEDIUM)
        elif score >= config.medium_threshold:
            tiers.append(MEDIUM)
        else:
            tiers.append(LOW)
    return tiers


def is_ambiguous(scores: Sequence[float], config: MatcherConfig) -> bool:
    """True when two plausible candidates (the leader at least ``medium``) are within the margin."""
    if len(scores) < 2 or scores[0] < config.medium_threshold:
        return False
    return bool(round(scores[0] - scores[1], config.score_decimals) < config.ambiguity_margin)
