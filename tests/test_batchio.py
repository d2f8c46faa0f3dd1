"""Row files of batch matching: every input format read alike, bad rows named, outputs resumable at an offset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from matcher import BatchError, Matcher
from matcher.batchio import (
    RESULT_FIELDS,
    InputRow,
    JsonlWriter,
    ParquetParts,
    inspect_input,
    output_format,
    read_rows,
    result_schema,
)

TEXTS = ["pull totals out of vendor invoices", "transcribe the call", "line one\nline two, with a comma",
         "naïve café ☕", "classify tickets"]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def rows_of(path: Path, *, text: str = "text", ids: str | None = None, start: int = 0) -> list[InputRow]:
    source = inspect_input(path, text_column=text, id_column=ids)
    return list(read_rows(source, text_column=text, id_column=ids, start=start))


def test_every_format_reads_the_same_rows_and_ids(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "in.jsonl", [json.dumps({"key": f"k{i}", "text": t}) for i, t in enumerate(TEXTS)])
    csv_file = write_csv(tmp_path / "in.csv", [["key", "text"], *([f"k{i}", t] for i, t in enumerate(TEXTS))])
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(TEXTS))], "text": TEXTS}), parquet, row_group_size=2)
    for path in (jsonl, csv_file, parquet):
        rows = rows_of(path, ids="key")
        assert [(r.row, r.id, r.text, r.error) for r in rows] == [
            (i, f"k{i}", t, None) for i, t in enumerate(TEXTS)], path
        assert [(r.row, r.id) for r in rows_of(path)] == [(i, i) for i in range(len(TEXTS))]  # row numbers
        for start in range(len(TEXTS) + 1):  # a resumed run reads exactly the rows after `start`
            assert rows_of(path, ids="key", start=start) == rows[start:], (path, start)
        assert inspect_input(path, text_column="text", id_column="key").rows == len(TEXTS)


def test_bad_jsonl_rows_carry_their_reason_and_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "fine", "id": 7}\n\n   \nnot json\n[1, 2]\n{"id": 8}\n{"text": null, "id": 9}\n'
                     b'{"text": 12, "id": 10}\n{"text": "x", "id": true}\n{"text": "x", "id": 1.5}\n'
                     b'{"text": "x", "id": " "}\n{"text": "x"}\n{"text": "\xff\xfe", "id": 11}\n')
    rows = rows_of(path, ids="id")
    found = [(r.row, r.line, r.id, r.error) for r in rows]
    assert found == [
        (0, 1, 7, None),
        (1, 4, None, "not valid JSON (Expecting value, column 1)"),
        (2, 5, None, "a JSON object was expected, got a list"),
        (3, 6, 8, "no 'text' field"),
        (4, 7, 9, "the text is null"),
        (5, 8, 10, "the text must be a string, got an integer"),
        (6, 9, None, "the id ('id') must be a string or an integer, got a boolean"),
        (7, 10, None, "the id ('id') must be a string or an integer, got a number"),
        (8, 11, None, "the id ('id') is empty"),
        (9, 12, None, "no 'id' field"),
        (10, 13, None, "not valid UTF-8"),
    ]
    assert rows_of(path)[1].id == 1  # without an id column, even an unreadable row keeps its row number


def test_a_wrong_text_column_stops_before_any_row(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "in.jsonl", [json.dumps({"query": t}) for t in TEXTS])
    with pytest.raises(BatchError, match=r"none of the first 5 rows has a 'text' field.*--text-column"):
        inspect_input(jsonl, text_column="text", id_column=None)
    csv_file = write_csv(tmp_path / "in.csv", [["query", "key"], ["a", "b"]])
    with pytest.raises(BatchError, match=r"no column 'text' \(its columns: 'query', 'key'\).*--text-column"):
        inspect_input(csv_file, text_column="text", id_column=None)
    with pytest.raises(BatchError, match=r"no column 'id'.*--id-column"):
        inspect_input(csv_file, text_column="query", id_column="id")
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [1, 2], "key": [0.5, 1.5]}), parquet)
    with pytest.raises(BatchError, match=r"column 'text' holds int64, not text"):
        inspect_input(parquet, text_column="text", id_column=None)
    pq.write_table(pa.table({"text": ["a", "b"], "key": [0.5, 1.5]}), parquet)
    with pytest.raises(BatchError, match=r"id column 'key' holds double"):
        inspect_input(parquet, text_column="text", id_column="key")


def test_file_names_decide_the_formats(tmp_path: Path) -> None:
    assert output_format(Path("out.jsonl")) == "jsonl"
    assert output_format(Path("OUT.PARQUET")) == "parquet"
    with pytest.raises(BatchError, match=r"cannot tell the output format.*\.jsonl"):
        output_format(Path("out.csv"))
    (tmp_path / "in.txt").write_text("x")
    with pytest.raises(BatchError, match="cannot tell the input format"):
        inspect_input(tmp_path / "in.txt", text_column="text", id_column=None)
    with pytest.raises(BatchError, match="no such file"):
        inspect_input(tmp_path / "missing.jsonl", text_column="text", id_column=None)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(BatchError, match="not a readable Parquet file"):
        inspect_input(tmp_path / "broken.parquet", text_column="text", id_column=None)


def test_csv_quirks_are_read_as_a_spreadsheet_writes_them(tmp_path: Path) -> None:
    long_text = "invoice " * 20_000  # 160,000 characters: past csv's default field limit
    path = tmp_path / "in.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:  # with the byte order mark Excel writes
        csv.writer(handle).writerows([["text", "id"], ["multi\nline", "a"], [], [long_text, "b"], ["short"]])
    with path.open("ab") as handle:
        handle.write(b"\xff bad bytes,c\r\n")
    rows = rows_of(path, ids="id")
    assert [(r.row, r.line, r.id, r.error) for r in rows] == [
        (0, 2, "a", None), (1, 5, "b", None), (2, 6, None, "no 'id' field"), (3, 7, None, "not valid UTF-8")]
    assert rows[0].text == "multi\nline" and rows[1].text == long_text
    assert rows_of(path)[3].id == 3


def test_parquet_ids_keep_their_integer_type(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "n": [10, 20, None]}), path)
    assert inspect_input(path, text_column="text", id_column="n").id_type == "int64"
    assert inspect_input(path, text_column="text", id_column=None).id_type == "int64"
    rows = rows_of(path, ids="n")
    assert [(r.id, r.error) for r in rows] == [
        (10, None), (20, "the text is null"), (None, "the id ('n') is null")]
    jsonl = write_jsonl(tmp_path / "in.jsonl", [json.dumps({"text": "a", "n": 1})])
    assert inspect_input(jsonl, text_column="text", id_column="n").id_type == "string"


def test_result_schema_has_the_fields_of_a_match(default_keyword_matcher: Matcher) -> None:
    body = default_keyword_matcher.match("extract invoice totals").to_dict()
    assert tuple(body) == RESULT_FIELDS
    assert result_schema().names == ["id", *RESULT_FIELDS]
    table = pa.Table.from_pylist([{"id": "a", **body}], schema=result_schema())
    assert table.to_pylist() == [{"id": "a", **body}]  # Arrow round-trips a result exactly


def test_a_jsonl_writer_cuts_what_came_after_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path)
    writer.write([{"a": 1}, {"b": "é"}])
    committed = writer.commit()
    writer.write([{"c": 3}])
    writer.close()
    with path.open("ab") as handle:
        handle.write(b'{"half": ')
    again = JsonlWriter(path, committed)
    again.write([{"d": 4}])
    again.commit()
    again.close()
    assert path.read_text(encoding="utf-8") == '{"a":1}\n{"b":"é"}\n{"d":4}\n'
    with pytest.raises(BatchError, match="changed outside it; start over with --overwrite"):
        JsonlWriter(path, 10_000)


def test_parquet_parts_drop_uncommitted_parts_and_merge_in_fixed_row_groups(
        tmp_path: Path, default_keyword_matcher: Matcher, monkeypatch: pytest.MonkeyPatch) -> None:
    from matcher import batchio

    monkeypatch.setattr(batchio, "_ROW_GROUP_ROWS", 4)
    body = default_keyword_matcher.match("extract invoice totals").to_dict()
    records = [{"id": i, **body} for i in range(10)]
    parts = ParquetParts(tmp_path / "parts", "string")
    parts.write(records[:3])
    assert parts.commit() == 1
    parts.write(records[3:7])
    assert parts.commit() == 2
    parts.write(records[7:])
    parts.commit()  # a third part, written after the journal's last commit (which says 2)
    resumed = ParquetParts(tmp_path / "parts", "string", parts=2)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["part-00000000.parquet", "part-00000001.parquet"]
    resumed.write(records[7:])
    resumed.commit()
    resumed.merge(tmp_path / "out.parquet")
    merged = pq.ParquetFile(tmp_path / "out.parquet")
    assert [merged.metadata.row_group(i).num_rows for i in range(merged.metadata.num_row_groups)] == [4, 4, 2]
    assert merged.read().to_pylist() == [{**r, "id": str(r["id"])} for r in records]  # string ids: ints as text
