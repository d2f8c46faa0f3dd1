"""Catalog loading and validation: the default catalog, records, files, errors and warnings."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import yaml

import matcher
from matcher import Catalog, CatalogError, CatalogWarning, UnknownTaskError, load_catalog

from .conftest import SHARED, small_records

SPEC = SHARED / "catalog" / "task-spec.jsonl"


def spec_rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in SPEC.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not SPEC.exists(), reason="shared/catalog/task-spec.jsonl is not beside the repo")
def test_default_catalog_covers_the_spec_exactly() -> None:
    catalog = matcher.default_catalog()
    spec = {row["id"]: row for row in spec_rows()}
    assert sorted(t.id for t in catalog) == sorted(spec)
    for task in catalog:
        row = spec[task.id]
        assert (task.category, task.has_blob_input, task.default_scorer) == (
            row["category"], row["has_blob_input"], row["default_scorer"]), task.id


def test_default_catalog_profiles_are_rich() -> None:
    for task in matcher.default_catalog():
        assert task.title and task.description, task.id
        assert len(task.keywords) >= 5, task.id
        assert len(task.phrases) >= 8, task.id
        assert len(set(task.phrases)) == len(task.phrases), task.id
        assert len(task.examples) >= 2, task.id
        assert all({"input", "output"} <= set(example) for example in task.examples), task.id


def test_default_catalog_loads_without_warnings() -> None:
    folder = Path(matcher.__file__).parent / "data" / "catalog"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_catalog(folder)


def test_default_catalog_has_out_of_scope_profiles_outside_the_task_list() -> None:
    catalog = matcher.default_catalog()
    unsupported = [p for p in catalog.profiles() if p.kind == "unsupported"]
    assert len(unsupported) >= 5
    assert all(p.id not in catalog for p in unsupported)
    assert len(catalog.profiles()) == len(catalog) + len(unsupported)


def test_from_records_needs_only_an_id_and_some_profile() -> None:
    catalog = Catalog.from_records([{"id": "b-task", "title": "B"}, {"id": "a-task", "phrases": ["x"]}])
    assert [t.id for t in catalog.list()] == ["a-task", "b-task"]
    assert [t.id for t in catalog] == ["a-task", "b-task"]
    assert len(catalog) == 2 and "a-task" in catalog and "zzz" not in catalog
    task = catalog.get("b-task")
    assert task.title == "B" and task.keywords == () and task.has_blob_input is False


def test_keywords_accept_a_list_or_a_weighted_mapping() -> None:
    catalog = Catalog.from_records([
        {"id": "a", "keywords": ["x", "y"]},
        {"id": "b", "keywords": {"z": 0.5}},
    ])
    assert catalog.get("a").keywords == (("x", 1.0), ("y", 1.0))
    assert catalog.get("b").keywords == (("z", 0.5),)


def test_unknown_id_raises_a_key_error_that_suggests_the_closest() -> None:
    catalog = matcher.default_catalog()
    with pytest.raises(UnknownTaskError) as info:
        catalog.get("invoice-extractoin")
    assert isinstance(info.value, KeyError)
    assert info.value.suggestions[0] == "invoice-extraction"
    assert "did you mean 'invoice-extraction'" in str(info.value)


def test_fingerprint_ignores_record_order_and_tracks_content() -> None:
    records = small_records()
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    assert Catalog.from_records(records).fingerprint == Catalog.from_records(shuffled).fingerprint
    changed = [dict(r) for r in records]
    changed[0]["title"] = "Invoice field extraction"
    assert Catalog.from_records(changed).fingerprint != Catalog.from_records(records).fingerprint


@pytest.mark.parametrize(
    ("records", "task_id", "field", "fragment"),
    [
        ([{"id": "a", "title": "x"}, {"id": "a", "title": "y"}], "a", "id", "duplicate"),
        ([{"id": "Not_Kebab", "title": "x"}], "Not_Kebab", "id", "pattern"),
        ([{"id": "a-b", "title": "x", "has_blob_input": "yes"}], "a-b", "has_blob_input", "boolean"),
        ([{"id": "a-b", "title": 3}], "a-b", "title", "string"),
        ([{"id": "a-b", "keywords": {"x": 2.0}}], "a-b", "keywords.x", "less than or equal"),
        ([{"id": "a-b", "keywords": {"x": True}}], "a-b", "keywords", "number"),
        ([{"id": "a-b", "phrases": ["ok", ""]}], "a-b", "phrases.1", "at least 1"),
        ([{"id": "a-b"}], "a-b", "profile", "profile is empty"),
        ([{"id": "a-b", "title": "x", "phrasess": ["typo"]}], "a-b", "phrasess", "Extra inputs"),
        ([{"title": "no id"}], None, "id", "Field required"),
    ],
)
def test_bad_records_name_the_task_and_field(records: list[dict[str, object]], task_id: str | None,
                                             field: str, fragment: str) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_records(records, source="mine.yaml")
    error = info.value
    assert error.task_id == task_id and error.field == field
    assert "mine.yaml" in str(error) and fragment in str(error)
    if task_id is not None:
        assert repr(task_id) in str(error)


def test_shared_keywords_and_phrases_warn_naming_both_tasks() -> None:
    records = small_records()
    records[1]["keywords"] = {**records[1]["keywords"], "Invoice": 0.4}  # type: ignore[dict-item]
    records[2]["phrases"] = [*records[2]["phrases"], "scan restaurant receipts"]  # type: ignore[misc]
    with pytest.warns(CatalogWarning) as caught:
        Catalog.from_records(records)
    messages = sorted(str(w.message) for w in caught)
    assert any("'invoice'" in m and "invoice-extraction and receipt-extraction" in m for m in messages)
    assert any("'scan restaurant receipts'" in m and "receipt-extraction and sentiment-analysis" in m
               for m in messages)


def test_load_catalog_reads_yaml_json_jsonl_and_directories(tmp_path: Path) -> None:
    records = small_records()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"tasks": records[:1]}))
    (tmp_path / "b.json").write_text(json.dumps(records[1:2]))
    (tmp_path / "c.jsonl").write_text(json.dumps(records[2]) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    catalog = load_catalog(tmp_path)
    assert [t.id for t in catalog] == sorted(r["id"] for r in records)  # type: ignore[type-var]
    assert load_catalog(tmp_path / "b.json").list()[0].id == "receipt-extraction"
    assert catalog.fingerprint == Catalog.from_records(records).fingerprint


@pytest.mark.skipif(not SPEC.exists(), reason="shared/catalog/task-spec.jsonl is not beside the repo")
def test_the_spec_file_itself_loads_as_a_catalog() -> None:
    assert len(load_catalog(SPEC)) == len(spec_rows())


def test_duplicate_ids_across_files_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "a", "title": "x"}]}))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "a", "title": "y"}]}))
    expected = r"two\.yaml: duplicate task id 'a' \(first defined in .*one\.yaml\)"
    with pytest.raises(CatalogError, match=expected):
        load_catalog(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("broken.yaml", "tasks: [ {id: a", "cannot parse"),
        ("broken.json", "{not json", "cannot parse"),
        ("scalar.yaml", "just a string", "expected a list of task records"),
        ("record.yaml", "tasks: [3]", "record #1 must be a mapping"),
    ],
)
def test_unparsable_files_name_the_file(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / name)
    assert name in str(info.value) and fragment in str(info.value)


def test_a_bad_file_in_a_directory_loads_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"tasks": small_records()}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"tasks": [{"id": "bad id"}]}))
    with pytest.raises(CatalogError, match=r"b\.yaml: task 'bad id': field 'id'"):
        load_catalog(tmp_path)


def test_missing_paths_and_empty_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such catalog file"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="no catalog files"):
        load_catalog(tmp_path)


def test_a_catalog_of_only_out_of_scope_profiles_is_rejected() -> None:
    with pytest.raises(CatalogError, match="no tasks"):
        Catalog.from_records([{"id": "weather", "kind": "unsupported", "title": "Weather"}])


def test_task_to_dict_limits_examples() -> None:
    task = matcher.default_catalog().get("invoice-extraction")
    assert "examples" not in task.to_dict(examples_n=0)
    assert len(task.to_dict(examples_n=1)["examples"]) == 1
    assert len(task.to_dict(examples_n=None)["examples"]) == len(task.examples)
    assert task.to_dict()["has_blob_input"] is True


def test_leaderboard_data_is_validated() -> None:
    board = {"models": [{"name": "open-1", "kind": "open", "quality": 0.8}], "illustrative": True}
    task = Catalog.from_records([{"id": "a", "title": "A", "leaderboard": board}]).get("a")
    assert task.leaderboard is not None and task.leaderboard["models"][0]["name"] == "open-1"
    bad = {"models": [{"name": "x", "kind": "open", "quality": 1.5}]}
    with pytest.raises(CatalogError, match=r"leaderboard\.models\.0\.quality"):
        Catalog.from_records([{"id": "a", "title": "A", "leaderboard": bad}])
