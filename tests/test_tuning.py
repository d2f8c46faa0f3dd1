"""Offline tuning: deterministic, validated input, a report with precision and recall per task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import matcher
from matcher import MatcherConfig, UnknownTaskError
from matcher.tuning import load_labelled

from .conftest import REPO

# Keyword-only tuning on this corpus cannot reach 97% precision; tune says so with this warning.
pytestmark = pytest.mark.filterwarnings("ignore:no setting reaches:RuntimeWarning")


def labelled_rows() -> list[tuple[str, str | None]]:
    return load_labelled(REPO / "corpora" / "queries" / "tune.jsonl")


def test_tune_is_deterministic_and_reports_per_task() -> None:
    rows = labelled_rows()
    first = matcher.tune(matcher.default_catalog(), rows, semantic=False)
    second = matcher.tune(matcher.default_catalog(), rows, semantic=False)
    assert first.to_dict() == second.to_dict()
    report = first.tuning
    assert report is not None
    assert 0.0 < report["precision_high"] <= 1.0
    assert 0.0 < report["recall_high"] <= 1.0
    assert report["queries"] == len(rows)
    per_task = report["per_task"]
    assert set(per_task) >= {label for _, label in rows if label}
    assert all(0.0 <= v["recall"] <= 1.0 for v in per_task.values() if v["recall"] is not None)


def test_the_shipped_keyword_config_is_what_tune_produces() -> None:
    tuned = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False)
    assert tuned == matcher.default_config(semantic=False)


def test_tuned_thresholds_are_consistent() -> None:
    config = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False)
    assert 0.0 <= config.medium_threshold <= config.high_threshold <= 1.0
    assert config.ambiguity_margin == config.high_margin
    assert MatcherConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_an_unreachable_target_warns_and_is_recorded() -> None:
    with pytest.warns(RuntimeWarning, match="no setting reaches 99%"):
        config = matcher.tune(matcher.default_catalog(), labelled_rows(), semantic=False,
                              target_precision=0.99)
    assert config.tuning is not None
    assert config.tuning["target_met"] is False


def test_unknown_labels_and_too_little_data_are_errors() -> None:
    catalog = matcher.default_catalog()
    with pytest.raises(UnknownTaskError, match="invoice-extraction"):
        matcher.tune(catalog, [("bills", "invoice-extractoin")] * 20, semantic=False)
    with pytest.raises(ValueError, match="at least 10 in-scope"):
        matcher.tune(catalog, [("bills", "invoice-extraction")] * 3, semantic=False)
    with pytest.raises(ValueError, match="target_precision"):
        matcher.tune(catalog, labelled_rows(), semantic=False, target_precision=1.5)


def test_load_labelled_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "ok", "task_id": null}\n{"txt": "missing"}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:2"):
        load_labelled(path)
    path.write_text('{"text": 3, "task_id": null}\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:1: text must be a string"):
        load_labelled(path)
