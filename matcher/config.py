"""`MatcherConfig`: every tunable number of the engine in one immutable, versioned object."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .gate import RequestGate

__all__ = ["CONFIG_FORMAT", "CONFIG_VERSION", "FieldWeights", "MatcherConfig"]

CONFIG_FORMAT = "task-matcher-config"
CONFIG_VERSION = 1


@dataclass(frozen=True)
class FieldWeights:
    """Weights of the keyword scorer's signals; the raw score is their weighted mean, in [0, 1]."""

    title: float = 1.0
    description: float = 1.0
    keywords: float = 2.0
    phrases: float = 1.0
    best_phrase: float = 2.0
    char_ngrams: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class MatcherConfig:
    """Scoring, calibration and confidence settings.

    Raw keyword and semantic scores become probabilities by a softmax over the whole catalog
    with a "no match" option (`calibration.calibrate`): ``exp(slope * raw_i)`` against
    ``exp(null_bias + null_coverage * coverage)``, where coverage is the share of the query's
    content words known to the catalog vocabulary. A top candidate
    is ``high`` when its score reaches `high_threshold` and leads the runner-up by `high_margin`;
    scores from
    `medium_threshold` are ``medium``; the rest ``low``. The keyword path alone decides when its
    top task reaches `fallback_threshold` with that lead and the catalog vocabulary knows at least
    `keyword_min_coverage` of the query's content words (a keyword answer to "foo bar baz" rests on
    "bar" alone, so it is never ``high``); otherwise the semantic backstop scores
    ``semantic_fusion * keyword_raw + (1 - semantic_fusion) * embedding_similarity``, and mixes in
    the probability of the discriminative head (`matcher.head`) by `semantic_head_weight`.
    `gate` is the request gate fitted by `tune` (`gate.RequestGate.to_dict()`): a ``high`` answer
    also needs its probability that the text requests a task at all to reach `gate_threshold`.
    `task_high_thresholds` overrides `high_threshold` for the tasks it names (fitted by `tune`
    only where a task's own labelled answers can show the precision target; see `tuning`).
    `tuning` keeps the report of the run that produced the config (not used for matching).
    """

    field_weights: FieldWeights = field(default_factory=FieldWeights)
    keyword_slope: float = 15.0
    keyword_null_bias: float = 4.0
    keyword_null_coverage: float = 0.0
    semantic_slope: float = 15.0
    semantic_null_bias: float = 5.0
    semantic_null_coverage: float = 0.0
    semantic_fusion: float = 0.5
    semantic_centroid_weight: float = 0.5
    semantic_head_weight: float = 0.0
    fallback_threshold: float = 0.6
    keyword_min_coverage: float = 0.5
    high_threshold: float = 0.6
    medium_threshold: float = 0.3
    high_margin: float = 0.1
    ambiguity_margin: float = 0.08
    fuzzy_cutoff: float = 85.0
    fuzzy_min_length: int = 5
    score_decimals: int = 4
    max_query_chars: int = 4096
    gate: dict[str, Any] | None = field(default=None, repr=False)
    gate_threshold: float = 0.0
    task_high_thresholds: dict[str, float] = field(default_factory=dict)
    tuning: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("high_threshold", "medium_threshold", "high_margin", "ambiguity_margin",
                     "semantic_fusion", "semantic_centroid_weight", "semantic_head_weight", "fallback_threshold",
                     "keyword_min_coverage", "gate_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.medium_threshold > self.high_threshold:
            raise ConfigError(
                f"medium_threshold ({self.medium_threshold}) must not exceed "
                f"high_threshold ({self.high_threshold})"
            )
        for name in ("keyword_slope", "semantic_slope"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("keyword_null_bias", "semantic_null_bias", "keyword_null_coverage",
                     "semantic_null_coverage"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)!r}")
        weights = self.field_weights.as_dict()
        if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"field_weights must be finite, non-negative and not all zero: {weights}")
        if not (0 <= self.fuzzy_cutoff <= 100):
            raise ConfigError(f"fuzzy_cutoff must be in [0, 100], got {self.fuzzy_cutoff!r}")
        if not (1 <= self.score_decimals <= 8):
            raise ConfigError(f"score_decimals must be in [1, 8], got {self.score_decimals!r}")
        if self.max_query_chars < 1 or self.fuzzy_min_length < 1:
            raise ConfigError("max_query_chars and fuzzy_min_length must be positive")
        if self.gate is not None:
            RequestGate.from_dict(self.gate, source="gate")
        if not isinstance(self.task_high_thresholds, dict):
            raise ConfigError("task_high_thresholds must map task ids to thresholds")
        for task_id, value in self.task_high_thresholds.items():
            if not (isinstance(task_id, str) and isinstance(value, (int, float)) and not isinstance(value, bool)
                    and self.medium_threshold <= value <= 1.0):
                raise ConfigError(f"task_high_thresholds[{task_id!r}] must be a number in [medium_threshold "
                                  f"({self.medium_threshold}), 1], got {value!r}")

    def high_threshold_for(self, task_id: str) -> float:
        """The ``high`` threshold of one task: its own when `tune` fitted one, else the global one."""
        return self.task_high_thresholds.get(task_id, self.high_threshold)

    def request_gate(self) -> RequestGate | None:
        """The request gate of this config (`gate.RequestGate`), or None when it has none."""
        return None if self.gate is None else RequestGate.from_dict(self.gate, source="gate")

    def with_changes(self, **changes: Any) -> MatcherConfig:
        """A copy with some settings replaced (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings with the format name and version."""
        body = asdict(self)
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **body}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "<dict>") -> MatcherConfig:
        """Settings from `to_dict()` output; unknown keys or another format version are errors."""
        if data.get("format") != CONFIG_FORMAT or data.get("version") != CONFIG_VERSION:
            raise ConfigError(
                f"{source}: not a {CONFIG_FORMAT} version {CONFIG_VERSION} file "
                f"(format={data.get('format')!r}, version={data.get('version')!r})"
            )
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {unknown}; known keys: {sorted(known)}")
        try:
            weights = FieldWeights(**body.pop("field_weights", {}))
            return cls(field_weights=weights, **body)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the config as JSON, atomically (a reader never sees half a file)."""
        payload = self.to_dict()
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | Path) -> MatcherConfig:
        """Read a config written by `save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read matcher config: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a matcher config must be a JSON object")
        return cls.from_dict(data, source=str(path))
