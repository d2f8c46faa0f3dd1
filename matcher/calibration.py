"""Map raw similarities to calibrated scores in [0, 1], decide what the scores answer, and assign
confidence tiers.

The decision (`summarize`, `keyword_is_confident`, `decide`) is vectorized over queries: the engine
runs it on one row, `tune` on every labelled query at once, so the two cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import MatcherConfig

__all__ = ["HIGH", "LOW", "MEDIUM", "Decision", "PathSummary", "calibrate", "clears_high", "confidence_tiers",
           "decide", "is_ambiguous", "keyword_is_confident", "summarize"]

HIGH, MEDIUM, LOW = "high", "medium", "low"

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


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
    probabilities: npt.NDArray[np.float64] = (weights / total).round(decimals)
    return probabilities


@dataclass(frozen=True)
class PathSummary:
    """Calibrated scores of queries on one path (keyword or semantic), one entry per query, reduced
    to what the decision reads."""

    first: npt.NDArray[np.int64]  # the leading task's profile position
    top: FloatArray  # the leading task's score
    second: FloatArray  # the runner-up task's score (0 with no runner-up)
    unsupported: FloatArray  # the best out-of-scope profile's score (-1 with none)
    known_words: BoolArray  # the catalog knows enough of the query's words to answer on this path

    @property
    def task_leads(self) -> BoolArray:
        """A task, not an out-of-scope profile, is strictly ahead."""
        return self.top > self.unsupported


def summarize(scores: FloatArray, tasks: BoolArray, unsupported: BoolArray, known_words: BoolArray) -> PathSummary:
    """Reduce `scores` (queries x profiles, profiles sorted by id) to a `PathSummary`. `tasks` marks the
    profiles that may be candidates (per profile, or per query and profile), `unsupported` the
    out-of-scope profiles; tasks rank by (score descending, position ascending)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    masked = np.where(tasks, scores, -1.0)
    rows = np.arange(len(scores))
    first = masked.argmax(axis=1).astype(np.int64)  # argmax takes the first of tied maxima: the lowest position
    top = masked[rows, first]
    if scores.shape[1] > 1:  # the runner-up: the best score once the leader's position is set aside
        masked[rows, first] = -np.inf
        runner = masked.max(axis=1)
    else:
        runner = np.zeros(len(scores))
    best_unsupported = (np.where(unsupported, scores, -1.0).max(axis=1) if np.asarray(unsupported).any()
                        else np.full(len(scores), -1.0))
    return PathSummary(first=first, top=top, second=np.maximum(runner, 0.0),
                       unsupported=best_unsupported,
                       known_words=_per_query(np.asarray(known_words, dtype=bool), len(scores)))


def _per_query(values: BoolArray, queries: int) -> BoolArray:
    """One value per query: `values` as given when it already has one, else broadcast."""
    return values if values.shape == (queries,) else np.broadcast_to(values, (queries,))


def clears_high(top: float | FloatArray, second: float | FloatArray, threshold: float | FloatArray, *, margin: float,
                decimals: int) -> BoolArray:
    """The ``high`` bar: `top` reaches `threshold` and leads `second` by `margin`, the lead rounded to
    the scores' `decimals` so that float noise in a subtraction never decides."""
    lead = (np.asarray(top) - np.asarray(second)).round(decimals)
    return np.asarray((np.asarray(top) >= threshold) & (lead >= margin))


def keyword_is_confident(config: MatcherConfig, keyword: PathSummary) -> BoolArray:
    """Whether the keyword path answers alone: a task leads on words the catalog mostly knows and clears
    the ``high`` bar at the fallback threshold; otherwise the semantic path scores the query."""
    return keyword.task_leads & keyword.known_words & clears_high(
        keyword.top, keyword.second, config.fallback_threshold, margin=config.high_margin,
        decimals=config.score_decimals)


@dataclass(frozen=True)
class Decision:
    """What the cascade answers for each query: the path that scored it and that path's summary."""

    semantic: BoolArray  # the semantic path scored the query (the keyword path was not confident)
    path: PathSummary  # the summary on the path that scored it
    out_of_scope: BoolArray  # an out-of-scope profile leads, at least ``medium``
    matched: BoolArray  # the leader is ``high``: a confident match
    clears_bar: BoolArray  # the same without the request gate (so ~matched & clears_bar: the gate refused)


def decide(config: MatcherConfig, keyword: PathSummary, semantic: PathSummary | None, *,
           high_thresholds: FloatArray | None = None, gate: FloatArray | None = None) -> Decision:
    """The cascade's answer for every query under `config`: the keyword path when it is confident (or
    when there is no `semantic` path), else the semantic path; then a match needs no out-of-scope
    profile ahead, known words, the ``high`` bar at the leading task's threshold (`high_thresholds`,
    one per profile; default the config's) and, with `gate` (each query's request-gate probability),
    a request."""
    if semantic is None:
        use_keyword, path = np.ones(len(keyword.top), dtype=bool), keyword
    else:
        use_keyword = keyword_is_confident(config, keyword)
        path = PathSummary(*(np.where(use_keyword, getattr(keyword, name), getattr(semantic, name))
                             for name in ("first", "top", "second", "unsupported", "known_words")))
    out_of_scope = (path.unsupported >= config.medium_threshold) & (path.unsupported > path.top)
    threshold = config.high_threshold if high_thresholds is None else np.asarray(high_thresholds)[path.first]
    clears_bar = ~out_of_scope & path.known_words & clears_high(
        path.top, path.second, threshold, margin=config.high_margin, decimals=config.score_decimals)
    matched = clears_bar if gate is None else clears_bar & (np.asarray(gate) >= config.gate_threshold)
    return Decision(semantic=~use_keyword, path=path, out_of_scope=out_of_scope, matched=matched,
                    clears_bar=clears_bar)


def confidence_tiers(scores: Sequence[float], config: MatcherConfig, *, leader_high: bool) -> list[str]:
    """Tiers for scores sorted descending: the leader is ``high`` when `leader_high` (the decision's
    ``matched``); everything else is ``medium`` from the medium threshold up, else ``low``."""
    return [HIGH if position == 0 and leader_high else MEDIUM if score >= config.medium_threshold else LOW
            for position, score in enumerate(scores)]


def is_ambiguous(scores: Sequence[float], config: MatcherConfig) -> bool:
    """True when two plausible candidates (the leader at least ``medium``) are within the margin."""
    if len(scores) < 2 or scores[0] < config.medium_threshold:
        return False
    return bool(round(scores[0] - scores[1], config.score_decimals) < config.ambiguity_margin)
