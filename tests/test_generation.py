"""Catalog generations: written once, read back identical, and refused when not the pinned one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

import matcher
from matcher import CatalogError, MatcherConfig
from matcher.generation import Generation, report_failure, reported_failures

from .conftest import small_records


def with_board() -> list[dict[str, object]]:
    records = small_records()
    records[0]["examples"] = [{"input": "scan.pdf", "output": {"total": 12.5, "lines": [1, 2]}}]
    records[1]["leaderboard"] = {"illustrative": True, "models": [{"name": "m-1", "kind": "open", "quality": 0.5}]}
    records.append({"id": "weather-now", "kind": "unsupported", "title": "Live weather"})
    return records


def test_a_snapshot_reads_back_the_same_generation(tmp_path: Path) -> None:
    catalog = matcher.Catalog.from_records(with_board(), source="mine.yaml")
    config = matcher.default_config(semantic=False)
    for generation in (Generation(catalog), Generation(catalog, config), Generation.load()):
        snapshot = generation.write(tmp_path)
        back = Generation.read(snapshot, fingerprint=generation.fingerprint)
        assert back.fingerprint == generation.fingerprint
        assert back.catalog.fingerprint == generation.catalog.fingerprint
        assert back.catalog.source == generation.catalog.source
        assert [p.to_dict(examples_n=None) for p in back.catalog.profiles()] == [
            p.to_dict(examples_n=None) for p in generation.catalog.profiles()]
        assert (None if back.config is None else back.config.to_dict()) == (
            None if generation.config is None else generation.config.to_dict())
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert Generation(catalog).fingerprint != Generation(catalog, config).fingerprint


def test_the_files_are_read_once_and_later_edits_do_not_reach_the_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "catalog.yaml"
    source.write_text(yaml.safe_dump(small_records()))
    generation = Generation.load(source)
    snapshot = generation.write(tmp_path / "generations")
    source.write_text("- id: broken\n  title: [unclosed\n")
    assert Generation.read(snapshot, fingerprint=generation.fingerprint).catalog.fingerprint == (
        generation.catalog.fingerprint)
    with pytest.raises(CatalogError):
        Generation.load(source)


def test_a_worker_refuses_a_generation_other_than_the_pinned_one(tmp_path: Path) -> None:
    first = Generation(matcher.Catalog.from_records(small_records()))
    second = Generation(first.catalog, MatcherConfig())
    snapshot = second.write(tmp_path)
    with pytest.raises(CatalogError, match=f"holds catalog generation {second.fingerprint[:12]}, not the pinned "
                                           f"generation {first.fingerprint[:12]}: every worker must serve the same"):
        Generation.read(snapshot, fingerprint=first.fingerprint)


def test_an_altered_missing_or_broken_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    generation = Generation(matcher.Catalog.from_records(small_records()))
    snapshot = generation.write(tmp_path)
    data = json.loads(snapshot.read_text())
    data["records"][0]["title"] = "Something else"  # consistent JSON, but not what was pinned
    snapshot.write_text(json.dumps(data))
    with pytest.raises(CatalogError, match=r"does not match its fingerprint .* the snapshot was altered"):
        Generation.read(snapshot, fingerprint=generation.fingerprint)
    snapshot.write_text(snapshot.read_text()[:100])
    with pytest.raises(CatalogError, match="cannot read the catalog generation"):
        Generation.read(snapshot, fingerprint=generation.fingerprint)
    snapshot.unlink()
    with pytest.raises(CatalogError, match="cannot read the catalog generation: no such file"):
        Generation.read(snapshot, fingerprint=generation.fingerprint)
    snapshot.write_text(json.dumps({"format": "something", "version": 1}))
    with pytest.raises(CatalogError, match="not a task-matcher-generation version 1 file"):
        Generation.read(snapshot, fingerprint=generation.fingerprint)


def test_failure_notes_are_left_beside_the_snapshot(tmp_path: Path) -> None:
    snapshot = Generation(matcher.Catalog.from_records(small_records())).write(tmp_path)
    assert reported_failures(tmp_path) == []
    report_failure(snapshot, "API keys file /k holds no keys")
    assert reported_failures(tmp_path) == ["API keys file /k holds no keys"]


def test_a_payload_carries_the_generation_to_another_process_and_is_checked() -> None:
    generation = Generation(matcher.Catalog.from_records(with_board()), matcher.default_config(semantic=False))
    payload = json.loads(json.dumps(generation.to_payload()))  # plain JSON data, as pickling or Ray sends it
    back = Generation.from_payload(payload, fingerprint=generation.fingerprint, source="sent")
    assert back.fingerprint == generation.fingerprint
    payload["records"][0]["title"] = "Changed on the way"
    with pytest.raises(CatalogError, match="sent: its content does not match its fingerprint"):
        Generation.from_payload(payload, fingerprint=generation.fingerprint, source="sent")
