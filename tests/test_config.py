"""MatcherConfig validation and its versioned JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import matcher
from matcher import ConfigError, FieldWeights, MatcherConfig


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    config = MatcherConfig(high_threshold=0.7, field_weights=FieldWeights(keywords=3.0),
                           tuning={"precision_high": 0.98})
    path = tmp_path / "nested" / "config.json"
    config.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "task-matcher-config"
    assert data["version"] == 1
    loaded = MatcherConfig.load(path)
    assert loaded == config
    assert loaded.tuning == {"precision_high": 0.98}
    own = config.with_changes(task_high_thresholds={"invoice-extraction": 0.9})
    own.save(path)
    assert MatcherConfig.load(path) == own and own.high_threshold_for("invoice-extraction") == 0.9
    assert own.high_threshold_for("receipt-extraction") == 0.7
    assert list(tmp_path.joinpath("nested").iterdir()) == [path]


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"high_threshold": 1.5}, "high_threshold must be a number in [0, 1]"),
    ({"medium_threshold": 0.9, "high_threshold": 0.5}, "must not exceed"),
    ({"keyword_slope": 0.0}, "keyword_slope must be a positive"),
    ({"semantic_null_bias": float("nan")}, "semantic_null_bias must be finite"),
    ({"field_weights": FieldWeights(0, 0, 0, 0, 0, 0)}, "not all zero"),
    ({"fuzzy_cutoff": 101}, "fuzzy_cutoff"),
    ({"score_decimals": 0}, "score_decimals"),
    ({"keyword_min_coverage": 1.2}, "keyword_min_coverage must be a number in [0, 1]"),
    ({"task_high_thresholds": {"invoice-extraction": 0.1}}, "task_high_thresholds['invoice-extraction']"),
    ({"task_high_thresholds": {"invoice-extraction": True}}, "must be a number in [medium_threshold"),
    ({"task_high_thresholds": [("a", 0.5)]}, "must map task ids"),
])
def test_invalid_settings_are_rejected(changes: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        MatcherConfig(**changes)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_wrong_format_version_or_keys_are_clear_errors(tmp_path: Path) -> None:
    good = MatcherConfig().to_dict()
    for data, fragment in [({**good, "version": 99}, "version 1"),
                           ({**good, "format": "other"}, "not a task-matcher-config"),
                           ({**good, "hgh_threshold": 0.5}, "unknown config keys ['hgh_threshold']")]:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as info:
            MatcherConfig.load(path)
        assert fragment in str(info.value)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        MatcherConfig.load(tmp_path / "broken.json")


def test_with_changes_validates_again() -> None:
    assert MatcherConfig().with_changes(high_margin=0.2).high_margin == 0.2
    with pytest.raises(ConfigError):
        MatcherConfig().with_changes(high_margin=-1)


def test_the_shipped_config_loads_and_is_the_default() -> None:
    shipped = Path(matcher.__file__).parent / "data" / "default-config.json"
    assert shipped.is_file()
    config = MatcherConfig.load(shipped)
    assert config == matcher.default_config()
    assert config.tuning is not None
    assert config.tuning["catalog_fingerprint"] == matcher.default_catalog().fingerprint
