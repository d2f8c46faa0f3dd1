"""Catalog loading and validation: the default catalog, records, files, errors and warnings."""

from __future__ import annotations

import datetime
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


def test_an_unknown_id_is_echoed_only_up_to_the_longest_possible_id() -> None:
    with pytest.raises(UnknownTaskError) as info:
        matcher.default_catalog().get("invoice-extractio" + "n" * 5000)
    assert info.value.task_id == "invoice-extractio" + "n" * 5000
    assert str(info.value).startswith(f"unknown task id {('invoice-extractio' + 'n' * 83)!r}... (5,017 characters)")
    assert len(str(info.value)) < 300


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
    expected = r"two\.yaml:2: task 'a': field 'id': duplicate task id 'a' \(first defined in .*one\.yaml, line 2\)"
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
    with pytest.raises(CatalogError, match=r"b\.yaml:2: task 'bad id': field 'id'"):
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
    task = Catalog.from_records([{"id": "a", "title": "Leaderboard task", "leaderboard": board}]).get("a")
    assert task.leaderboard is not None and task.leaderboard["models"][0]["name"] == "open-1"
    bad = {"models": [{"name": "x", "kind": "open", "quality": 1.5}]}
    with pytest.raises(CatalogError, match=r"leaderboard\.models\.0\.quality"):
        Catalog.from_records([{"id": "a", "title": "Leaderboard task", "leaderboard": bad}])


BROKEN_YAML = """\
tasks:
  - id: invoice-x
    title: Invoices
    keywords:
      invoice: 1.0
      total: 3
  - id: fine-task
    title: Fine
  - id: Bad_Id
    titel: typo
  - 5
  - id: fine-task
    title: Again
"""


def test_every_problem_of_every_file_is_reported_in_one_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BROKEN_YAML)
    (tmp_path / "b.jsonl").write_text('{"id": "j-1", "title": "x"}\n\n{"id": "j-2", "title": 3}\n{oops\n')
    (tmp_path / "c.json").write_text('[{"id": "k-1", "title": "x"}, {"title": "no id"}]')
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    error = info.value
    a, b, c = (str(tmp_path / name) for name in ("a.yaml", "b.jsonl", "c.json"))
    assert [str(problem) for problem in error.errors] == [
        f"{a}:6: task 'invoice-x': field 'keywords.total': Input should be less than or equal to 1",
        f"{a}:9: task 'Bad_Id': field 'id': String should match pattern '^[a-z0-9]+(?:-[a-z0-9]+)*$' "
        "(ids are kebab-case: lowercase letters and digits in words joined by single hyphens)",
        f"{a}:10: task 'Bad_Id': field 'titel': Extra inputs are not permitted; did you mean 'title'?",
        f"{a}:11: record #4 must be a mapping of fields (an 'id' and at least one of title, description, "
        "keywords or phrases), got a number",
        f"{a}:12: task 'fine-task': field 'id': duplicate task id 'fine-task' (first defined at line 7); "
        "ids must be unique across the catalog",
        f"{b}:3: task 'j-2': field 'title': Input should be a valid string",
        f"{b}:4:2: cannot parse catalog file: Expecting property name enclosed in double quotes",
        f"{c}:1: record #2: field 'id': Field required",
    ]
    assert str(error).startswith(f"{tmp_path}: 8 problems, nothing was loaded:\n  {a}:6: ")
    assert all(f"\n  {problem}" in str(error) for problem in error.errors)
    assert (error.source, error.line, error.task_id, error.field) == (a, 6, "invoice-x", "keywords.total")
    assert [p.line for p in error.errors] == [6, 9, 10, 11, 12, 3, 4, 1]


def test_a_single_problem_is_the_error_itself() -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_records([{"id": "a", "title": ""}], source="mine.yaml")
    assert info.value.errors == (info.value,)
    assert str(info.value) == "mine.yaml: task 'a': field 'title': String should have at least 1 character"


def test_a_long_list_of_problems_is_capped_in_the_message() -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_records([{"id": f"t-{i}", "title": ""} for i in range(60)], source="many.yaml")
    message = str(info.value)
    assert len(info.value.errors) == 60
    assert message.startswith("many.yaml: 60 problems, nothing was loaded:")
    assert "task 't-49'" in message and "task 't-50'" not in message
    assert message.endswith("\n  and 10 more")


def test_record_and_field_lines_in_each_format(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("# comment\n- id: a\n  title: A\n- id: b\n  phrases:\n    - ok\n    - ''\n")
    (tmp_path / "lines.jsonl").write_text('\n{"id": "c", "title": "C"}\n\n{"id": "d", "title": ""}\n')
    (tmp_path / "wrapped.json").write_text(
        '{"tasks": [\n  {"id": "e", "title": "E"},\n  {"id": "f",\n   "title": ""}\n]}\n')
    (tmp_path / "plain.json").write_text('[\n{"id": "g", "title": "G"},\n\n{"id": "h", "title": ""}]')
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    where = {problem.task_id: (Path(problem.source or "").name, problem.line, problem.field)
             for problem in info.value.errors}
    assert where == {
        "b": ("list.yaml", 7, "phrases.1"),
        "d": ("lines.jsonl", 4, "title"),
        "f": ("wrapped.json", 3, "title"),
        "h": ("plain.json", 4, "title"),
    }


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.yaml", "tasks:\n  - id: a\n    title: [x\n", ":4:1: cannot parse catalog file: expected ',' or ']'"),
        ("tabs.yaml", "tasks:\n  - id: a\n\ttitle: x\n", ":3:1: cannot parse catalog file: found character '\\t'"),
        ("two.yaml", "- id: a\n---\n- id: b\n", ":2:1: cannot parse catalog file: found another document"),
        ("control.yaml", "- id: a\n  title: 'x\x07'\n", ":2:12: cannot parse catalog file: character U+0007"),
        ("broken.json", '[\n  {"id": "a",\n}]', ":3:1: cannot parse catalog file: Expecting property name"),
    ],
)
def test_syntax_errors_point_at_the_file_line_and_column(tmp_path: Path, name: str, content: str,
                                                         expected: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}{expected}")
    assert "<unicode string>" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("version.yaml", "tasks: []\nversion: 2\n", ":2: unexpected top-level key 'version': expected a list of "
         "task records or a mapping with the single key 'tasks'"),
        ("typo.yaml", "task:\n  - id: a\n", ":1: unexpected top-level key 'task': expected a list of task records "
         "or a mapping with the single key 'tasks'; did you mean 'tasks' instead of 'task'?"),
        ("record.yaml", "id: a\ntitle: A\n", ":1: unexpected top-level keys 'id', 'title': expected a list of task "
         "records or a mapping with the single key 'tasks'; a single record must still be inside a list"),
        ("version.json", '{"tasks": [], "version": 2}', ": unexpected top-level key 'version'"),
        ("scalar.yaml", "tasks: 3\n", ":1: field 'tasks' must be a list of task records, got a number"),
        ("empty.yaml", "", ": the file is empty: expected a list of task records"),
    ],
)
def test_a_wrong_file_shape_names_the_key(tmp_path: Path, name: str, content: str, expected: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}{expected}")
    assert info.value.field == "tasks"


BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
tasks: [*i]
"""


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("deep.yaml", "[" * 100_000, ":1:101: cannot parse catalog file: nested deeper than 100 levels"),
        ("deep.json", "[" * 100_000, ": cannot parse catalog file: nested deeper than 100 levels"),
        ("deep.jsonl", "[" * 100_000, ":1: cannot parse catalog file: nested deeper than 100 levels"),
        ("parsable-but-deep.json", "[" * 200 + "]" * 200, ": cannot parse catalog file: nested deeper than 100 levels"),
        ("bomb.yaml", BILLION_LAUGHS, ":1:4: cannot parse catalog file: YAML anchor '&a' is not allowed"),
        ("alias.yaml", "- id: a\n  title: x\n- id: b\n  title: *x\n", ":4:10: cannot parse catalog file: "
         "YAML alias '*x' is not allowed in catalog files: write the value out in full"),
        ("merge.yaml", "- &base {id: a, title: x}\n- <<: *base\n  id: b\n", ":1:3: cannot parse catalog file: "
         "YAML anchor '&base' is not allowed"),
    ],
)
def test_hostile_nesting_and_aliases_are_refused_quickly(tmp_path: Path, name: str, content: str,
                                                        expected: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}{expected}")


def test_files_over_the_size_limit_are_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(16 * 1024 * 1024 + 1)  # sparse: costs no disk or memory
    with pytest.raises(CatalogError, match=r"huge\.yaml: file is larger than 16 MiB, the limit for one catalog file"):
        load_catalog(huge)


def test_non_utf8_files_name_the_line_and_byte(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes("- id: a\n  title: café\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"latin1\.yaml:2: catalog files must be UTF-8 text: invalid byte 0xE9"):
        load_catalog(tmp_path / "latin1.yaml")


@pytest.mark.parametrize(
    ("example", "field", "fragment"),
    [
        ({"input": "x", "output": {"total": float("nan")}}, "examples.0.output.total", "must be a finite number"),
        ({"input": "x", "output": [1.0, float("inf")]}, "examples.0.output.1", "must be a finite number"),
        ({"input": {"when": datetime.date(2024, 1, 31)}}, "examples.0.input.when",
         "got date; quote it to keep it a string"),
        ({"input": {1: "x"}}, "examples.0.input", "key 1 must be a string"),
        ({"input": {"tags": {"a", "b"}}}, "examples.0.input.tags", "must be a JSON value"),
        ({"input": b"raw"}, "examples.0.input", "got bytes"),
    ],
)
def test_examples_must_be_json_values(example: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(CatalogError) as info:
        Catalog.from_records([{"id": "a", "title": "A", "examples": [{"input": "ok"}, example]}])
    error = info.value
    expected_field = field.replace("examples.0", "examples.1")
    assert (error.task_id, error.field) == ("a", expected_field)
    assert f"task 'a': field '{expected_field}': " in str(error) and fragment in str(error)


def test_non_finite_numbers_in_files_are_refused_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- id: a\n  title: A\n  examples:\n    - input: x\n      output: .inf\n")
    (tmp_path / "b.jsonl").write_text('{"id": "b", "title": "B", "examples": [{"output": {"total": NaN}}]}\n')
    board = {"models": [{"name": "m", "kind": "open", "quality": float("inf")}]}
    (tmp_path / "c.json").write_text(json.dumps([{"id": "c", "title": "C", "leaderboard": board}]))
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    problems = [str(problem).removeprefix(str(tmp_path) + "/") for problem in info.value.errors]
    assert problems[0] == "a.yaml:5: task 'a': field 'examples.0.output': must be a finite number, got inf"
    assert problems[1] == "b.jsonl:1: task 'b': field 'examples.0.output.total': must be a finite number, got nan"
    assert problems[2].startswith("c.json:1: task 'c': field 'leaderboard.models.0.quality': Input should be a finite")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("record.yaml", "- id: a\n  title: Invoices\n  title: Receipts\n",
         ":3:3: cannot parse catalog file: duplicate key 'title' (first at line 2): each key may appear once"),
        ("top.yaml", "tasks:\n  - id: a\n    title: A\ntasks:\n  - id: b\n    title: B\n",
         ":4:1: cannot parse catalog file: duplicate key 'tasks' (first at line 1)"),
        ("keywords.yaml", "- id: a\n  keywords:\n    invoice: 1.0\n    invoice: 0.2\n",
         ":4:5: cannot parse catalog file: duplicate key 'invoice' (first at line 3)"),
        ("record.json", '[{"id": "a", "title": "Invoices", "title": "Receipts"}]',
         ": cannot parse catalog file: duplicate key 'title': each key may appear once"),
        ("record.jsonl", '{"id": "a", "title": "A"}\n{"id": "b", "title": "B", "id": "c"}\n',
         ":2: cannot parse catalog file: duplicate key 'id': each key may appear once"),
    ],
)
def test_duplicate_keys_are_errors_not_the_last_value(tmp_path: Path, name: str, content: str,
                                                      expected: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / name)
    assert str(info.value).startswith(f"{tmp_path / name}{expected}")


def test_a_catalog_of_stop_words_only_is_an_error_naming_the_tasks(tmp_path: Path) -> None:
    (tmp_path / "stop.yaml").write_text("- id: the-one\n  title: The one\n  phrases: [what is this]\n"
                                        "- id: it-is\n  keywords: [the, and]\n  description: It is what it is.\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "stop.yaml")
    error = info.value
    assert (error.task_id, error.field) == ("it-is", "profile")
    assert str(error).startswith(f"{tmp_path / 'stop.yaml'}: task 'it-is', 'the-one': field 'profile': no task "
                                 "has a content word")
    # one task with content words is enough to build the index; the others are merely unreachable
    assert len(Catalog.from_records([{"id": "the-one", "title": "The one"}, {"id": "b", "title": "Invoices"}])) == 2


def test_the_schema_documents_every_field() -> None:
    from matcher.catalog import _Leaderboard, _LeaderboardEntry, _TaskRecord

    schema = (Path(matcher.__file__).parent / "data" / "catalog" / "SCHEMA.md").read_text()
    for model in (_TaskRecord, _Leaderboard, _LeaderboardEntry):
        for name in model.model_fields:
            assert f"| `{name}` |" in schema, (model.__name__, name)
    for term in ("`capability`", '`type: "capability"`', "`.jsonl`", "16 MiB", "anchors and aliases", "UTF-8"):
        assert term in schema, term


TRANSLATION = {"id": "translation", "title": "Translation", "description": "Translate text between languages.",
               "keywords": {"translate": 1.0}, "phrases": ["turn this french email into english"]}


def test_an_updated_catalog_adds_replaces_and_removes_and_leaves_the_old_one_alone() -> None:
    catalog = matcher.Catalog.from_records(small_records())
    receipt = {**catalog.get("receipt-extraction").to_record(), "title": "Receipt and till slip extraction"}
    updated = catalog.updated(add=[TRANSLATION], replace=[receipt], remove=["sentiment-analysis"])
    assert [t.id for t in updated] == ["invoice-extraction", "receipt-extraction", "translation"]
    assert updated.get("receipt-extraction").title == "Receipt and till slip extraction"
    assert updated.get("invoice-extraction") == catalog.get("invoice-extraction")
    assert [t.id for t in catalog] == ["invoice-extraction", "receipt-extraction", "sentiment-analysis"]
    assert updated.fingerprint != catalog.fingerprint
    assert catalog.updated().fingerprint == catalog.fingerprint  # nothing changed, same catalog
    as_task = matcher.Catalog.from_records([TRANSLATION]).get("translation")
    assert catalog.updated(add=[as_task]).fingerprint == catalog.updated(add=[TRANSLATION]).fingerprint


def test_updating_a_catalog_names_what_is_wrong() -> None:
    catalog = matcher.Catalog.from_records(small_records())
    with pytest.raises(CatalogError, match="already in the catalog: pass it in replace"):
        catalog.updated(add=[{**TRANSLATION, "id": "receipt-extraction"}])
    with pytest.raises(UnknownTaskError, match="did you mean 'receipt-extraction'"):
        catalog.updated(replace=[{**TRANSLATION, "id": "receipt-extractoin"}])
    with pytest.raises(UnknownTaskError, match="did you mean 'sentiment-analysis'"):
        catalog.updated(remove=["sentiment-analysys"])
    with pytest.raises(CatalogError, match="named twice"):
        catalog.updated(replace=[catalog.get("receipt-extraction")], remove=["receipt-extraction"])
    with pytest.raises(CatalogError, match=r"translation.*keywords"):
        catalog.updated(add=[{**TRANSLATION, "keywords": {"translate": "high"}}])
    with pytest.raises(TypeError, match="remove must be a list of strings"):
        catalog.updated(remove="sentiment-analysis")  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="the catalog has no tasks"):
        catalog.updated(remove=[t.id for t in catalog])


def test_libyaml_and_the_checking_loader_read_the_default_catalog_alike() -> None:
    from importlib import resources

    from matcher.catalog import _CatalogLoader, _fast_loader, _node_line

    folder = resources.files("matcher") / "data" / "catalog"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".yaml"))
    assert files
    for file in files:
        text = file.read_text(encoding="utf-8")
        fast, checking = _fast_loader(text), _CatalogLoader(text)
        assert fast is not None, file.name  # no anchor, alias or deep nesting: libyaml reads it
        roots = fast.get_single_node(), checking.get_single_node()
        assert fast.construct_document(roots[0]) == checking.construct_document(roots[1]), file.name
        for index in range(len(roots[1].value)):
            for field in ("id", "keywords", "phrases"):
                assert _node_line(roots[0], (index, field)) == _node_line(roots[1], (index, field)), file.name


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "- a: &x 1\n", "[" * 120 + "]" * 120 + "\n"])
def test_anchors_aliases_and_deep_nesting_are_left_to_the_checking_loader(text: str) -> None:
    from matcher.catalog import _fast_loader

    assert _fast_loader(text) is None


def test_the_libyaml_loader_refuses_duplicate_keys_too() -> None:
    from matcher.catalog import _fast_loader

    fast = _fast_loader("a: 1\nb: 2\na: 3\n")
    assert fast is not None
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'a' \\(first at line 1\\)"):
        fast.construct_document(fast.get_single_node())


def _write_small_catalog(folder: Path) -> Path:
    folder.mkdir()
    records = small_records()
    (folder / "a.yaml").write_text(yaml.safe_dump({"tasks": records[:2]}, sort_keys=False), encoding="utf-8")
    (folder / "b.yaml").write_text(yaml.safe_dump(records[2:], sort_keys=False), encoding="utf-8")
    return folder


def _same_tasks(left: Catalog, right: Catalog) -> bool:
    return [t.to_dict() for t in left] == [t.to_dict() for t in right] and left.fingerprint == right.fingerprint


def test_a_cached_parse_gives_the_same_catalog_without_parsing_yaml(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import matcher.catalog as catalog_module

    folder, cache = _write_small_catalog(tmp_path / "catalog"), tmp_path / "cache"
    plain = load_catalog(folder)
    first = load_catalog(folder, cache_dir=cache)
    assert len(list(cache.glob("catalog-*.json"))) == 2  # one entry per YAML file
    monkeypatch.setattr(catalog_module, "_yaml_records", lambda *_: pytest.fail("the YAML was parsed again"))
    second = load_catalog(folder, cache_dir=cache)
    assert _same_tasks(plain, first) and _same_tasks(plain, second)


def test_an_edited_file_is_parsed_again(tmp_path: Path) -> None:
    folder, cache = _write_small_catalog(tmp_path / "catalog"), tmp_path / "cache"
    load_catalog(folder, cache_dir=cache)
    text = (folder / "b.yaml").read_text(encoding="utf-8")
    (folder / "b.yaml").write_text(text.replace("Sentiment analysis", "Opinion mining"), encoding="utf-8")
    assert load_catalog(folder, cache_dir=cache).get("sentiment-analysis").title == "Opinion mining"
    assert len(list(cache.glob("catalog-*.json"))) == 3


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe not json", b'{"format": 1, "key": "x", "records": []}',
                                     b"[1, 2, 3]", b'{"format": 1}'])
def test_an_unusable_cache_entry_is_parsed_again_and_replaced(tmp_path: Path, garbage: bytes) -> None:
    folder, cache = _write_small_catalog(tmp_path / "catalog"), tmp_path / "cache"
    plain = load_catalog(folder, cache_dir=cache)
    for entry in cache.glob("catalog-*.json"):
        entry.write_bytes(garbage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cache only saves time: nothing to warn about
        assert _same_tasks(plain, load_catalog(folder, cache_dir=cache))
    assert all(entry.read_bytes() != garbage for entry in cache.glob("catalog-*.json"))


def test_a_cache_folder_that_cannot_be_written_only_costs_time(tmp_path: Path) -> None:
    folder = _write_small_catalog(tmp_path / "catalog")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same_tasks(load_catalog(folder), load_catalog(folder, cache_dir=blocked / "cache"))


def test_problems_name_the_same_lines_with_a_warm_cache(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("# comment\n- id: a\n  title: A\n- id: b\n  phrases:\n    - ok\n    - ''\n")
    (tmp_path / "more.yaml").write_text("- id: a\n  title: again\n")
    with pytest.raises(CatalogError) as uncached:
        load_catalog(tmp_path)
    for _ in range(2):  # the first load fills the cache, the second reads it and is redone from the files
        with pytest.raises(CatalogError) as cached:
            load_catalog(tmp_path, cache_dir=tmp_path / "cache")
        assert [(p.source, p.line, p.task_id, p.field, str(p)) for p in cached.value.errors] == \
            [(p.source, p.line, p.task_id, p.field, str(p)) for p in uncached.value.errors]
    assert {p.line for p in uncached.value.errors} == {7, 1}  # field line 7, not the record's line 4


def test_data_json_cannot_hold_exactly_is_not_cached(tmp_path: Path) -> None:
    (tmp_path / "dated.yaml").write_text("- id: a\n  title: A\n  description: 2024-01-01\n")
    cache = tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(CatalogError, match="description"):
            load_catalog(tmp_path / "dated.yaml", cache_dir=cache)
    assert not list(cache.glob("catalog-*.json"))


def test_the_default_catalog_is_read_through_the_default_cache(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import matcher.catalog as catalog_module

    monkeypatch.setenv("TASK_MATCHER_CACHE", str(tmp_path))
    monkeypatch.setattr(catalog_module, "_DEFAULT", None)
    first = matcher.default_catalog()
    shipped = Path(catalog_module.__file__).parent / "data" / "catalog"
    assert len(list(tmp_path.glob("catalog-*.json"))) == len(list(shipped.glob("*.yaml"))) > 1
    monkeypatch.setattr(catalog_module, "_DEFAULT", None)
    monkeypatch.setattr(catalog_module, "_yaml_records", lambda *_: pytest.fail("the YAML was parsed again"))
    assert _same_tasks(first, matcher.default_catalog())


def test_a_matcher_given_a_path_keeps_the_parsed_catalog_in_its_cache_folder(tmp_path: Path) -> None:
    folder, cache = _write_small_catalog(tmp_path / "catalog"), tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", matcher.ConfigWarning)  # three tasks are too few to self-calibrate
        engine = matcher.Matcher(folder, semantic=False, cache_dir=cache)
    assert len(list(cache.glob("catalog-*.json"))) == 2
    assert _same_tasks(engine.catalog, load_catalog(folder))
