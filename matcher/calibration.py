"""Map raw similarities to calibrated scores in [0, 1] and assign confidence tiers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .config import MatcherConfig

__all__ = ["HIGH", "LOW", "MEDIUM", "calibrate", "confidence_tiers", "is_ambiguous"]

HIGH, MEDIUM, LOW = "high", "medium", "low"


def calibrate(raw: npt.NDArray[np.float64], *, slope: float, null_bias: float, decimals: int,
              null_coverage: float = 0.0,
              coverage: float | npt.NDArray[np.float64] = 0.0,
              within: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.float64]:
    """Probability that each profile is the one the query asks for, over the whole catalog.

    A softmax over every profile plus a "no match" option whose utility is
    ``null_bias + null_coverage * coverage``: ``p_i = exp(slope * raw_i) / (exp(null) +
    sum_j exp(slope * raw_j))``. Two near-equal candidates share the probability mass instead
    of both looking certain, scores never sum past 1, and the ranking is that of `raw`. Rows
    of a 2-D `raw` are queries (then `coverage` has one value per row). Rounded so that
    ranking never sees float noise. With `within` (a mask over profiles), the softmax runs over
    the profiles it marks alone and every other one scores 0: a scoped request.
    """
    values = slope * np.asarray(raw, dtype=np.float64)
    if within is not None:
        values = np.where(within, values, -np.inf)
    null = null_bias + null_coverage * np.asarray(coverage, dtype=np.float64)
    if values.ndim == 2:
        null = np.broadcast_to(null, (values.shape[0],))[:, None]
    peak = np.maximum(values.max(axis=-1, keepdims=True), null)
    weights = np.exp(values - peak)
    total = weights.sum(axis=-1, keepdims=True) + np.exp(null - peak)
    probabilities: npt.NDArray[np.float64] = np.round(weights / total, decimals)
    return probabilities


def confidence_tiers(scores: Sequence[float], config: MatcherConfig, *,
                     allow_high: bool = True, high_threshold: float | None = None) -> list[str]:
    """Tiers for scores sorted descending.

    Only the leader can be ``high``: it needs the absolute threshold (`high_threshold`, the
    leader's own when given, else the config's) *and* a lead of `high_margin` over the runner-up.
    Everything else is capped at ``medium``, so tiers never rise as scores fall.
    """
    threshold = config.high_threshold if high_threshold is None else high_threshold
    tiers = []
    for position, score in enumerate(scores):
        if score >= threshold and position == 0 and allow_high:
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
