"""Row files of batch matching: JSON lines, CSV or Parquet in; JSON lines or Parquet out.

`inspect_input` reads an input file once before a run: it counts the rows (for the progress bar),
hashes the bytes (a resumed run must read the same file) and checks that the text and id columns
exist, so a wrong `--text-column` fails at once instead of filling the errors file. `read_rows`
then yields one `InputRow` per data row from any row on; a row that cannot be matched (not JSON,
no text, an id that is neither a string nor an integer) carries the reason instead of failing the
run. Output goes through `JsonlWriter` (appends, and truncates a resumed file back to its last
committed byte) or `ParquetParts` (one part file per commit, merged into the output at the end).
Parquet needs pyarrow (`task-matcher[parquet]`), imported only when a Parquet file is used.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from .cachefiles import write_atomically
from .errors import BatchError

__all__ = [
    "RESULT_FIELDS",
    "InputFile",
    "InputRow",
    "JsonlWriter",
    "ParquetParts",
    "inspect_input",
    "output_format",
    "read_rows",
    "result_schema",
    "text_problem",
]

Format = Literal["jsonl", "csv", "parquet"]
RowId = str | int
_INPUT_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                                      ".parquet": "parquet", ".pq": "parquet"}
_OUTPUT_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
RESULT_FIELDS = ("query", "matched", "chosen", "candidates", "ambiguous", "matcher", "type", "confidence",
                 "reasoning", "capability")
"""The keys of `TaskMatch.to_dict()`, in its order: the columns of a result after its `id`."""
_PARQUET_HINT = "pip install 'task-matcher[parquet]' -c constraints.txt"
_COLUMN_PROBE_ROWS = 1000  # a JSONL text column absent from all of these rows is a wrong --text-column
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # csv's own limit (128 KiB) would fail the run on one long text
_HASH_BLOCK = 1 << 20
_ROW_GROUP_ROWS = 65536


@dataclass(frozen=True)
class InputRow:
    """One data row: its position (0-based, counting data rows only), its line in a line-based file,
    its id (the id column's value, or `row`), its text as read, and why it cannot be matched (or None)."""

    row: int
    line: int | None
    id: RowId | None
    text: object
    error: str | None = None


@dataclass(frozen=True)
class InputFile:
    """An input file checked by `inspect_input`: format, row count, SHA-256 of its bytes, and the
    Parquet type of the ids ("int64" for row numbers and integer id columns of a Parquet input)."""

    path: Path
    format: Format
    rows: int
    digest: str
    id_type: Literal["int64", "string"]


def _suffix_format(path: Path, table: dict[str, Format], role: str) -> Format:
    found = table.get(path.suffix.lower())
    if found is None:
        names = ", ".join(sorted(table))
        raise BatchError(f"{path}: cannot tell the {role} format from the name: use one of {names}")
    return found


def output_format(path: Path) -> Format:
    """``"jsonl"`` or ``"parquet"``, from the output file's suffix."""
    return _suffix_format(path, _OUTPUT_SUFFIXES, "output")


def text_problem(value: object) -> str | None:
    """Why `value` cannot be a request's text before the matcher sees it (None: it is a string)."""
    if isinstance(value, str):
        return None
    if value is None:
        return "the text is null"
    return f"the text must be a string, got {_type_name(value)}"


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _id_problem(value: object, column: str) -> str | None:
    if value is None:
        return f"the id ({column!r}) is null"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"the id ({column!r}) must be a string or an integer, got {_type_name(value)}"
    if isinstance(value, str) and not value.strip():
        return f"the id ({column!r}) is empty"
    return None


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BatchError(f"Parquet files need pyarrow: {_PARQUET_HINT}") from None
    return pyarrow


def inspect_input(path: Path, *, text_column: str, id_column: str | None) -> InputFile:
    """Count, hash and check an input file; raises `BatchError` naming what to fix."""
    fmt = _suffix_format(path, _INPUT_SUFFIXES, "input")
    if not path.is_file():
        raise BatchError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    if fmt == "parquet":
        rows, id_type = _inspect_parquet(path, text_column, id_column)
    elif fmt == "csv":
        rows, id_type = _inspect_csv(path, text_column, id_column), "string"
    else:
        rows, id_type = _inspect_jsonl(path, text_column), "string"
    return InputFile(path, fmt, rows, digest.hexdigest(), "int64" if id_column is None else id_type)


def _inspect_jsonl(path: Path, text_column: str) -> int:
    rows = 0
    seen_text = False
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            if rows < _COLUMN_PROBE_ROWS and not seen_text:
                with contextlib.suppress(ValueError):
                    record = json.loads(raw)
                    seen_text = isinstance(record, dict) and text_column in record
            rows += 1
    if rows and not seen_text:
        raise BatchError(f"{path}: none of the first {min(rows, _COLUMN_PROBE_ROWS):,} rows has a "
                         f"{text_column!r} field: name the field that holds the text with --text-column")
    return rows


def _csv_rows(handle: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """(line, record) of each non-blank CSV record, after raising csv's field size limit for the read."""
    previous = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        reader = csv.reader(handle)
        line = 1
        for record in reader:
            if record:
                yield line, record
            line = reader.line_num + 1
    except csv.Error as exc:
        raise BatchError(f"{handle.name}: line {line}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(previous)


def _open_csv(path: Path) -> IO[str]:
    # Invalid UTF-8 is kept as surrogates and reported per row, not as an error of the whole file.
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_header(path: Path, rows: Iterator[tuple[int, list[str]]], text_column: str,
                id_column: str | None) -> list[str]:
    header = next(rows, (0, []))[1]
    for column, option in ((text_column, "--text-column"), (id_column, "--id-column")):
        if column is not None and column not in header:
            shown = ", ".join(repr(name) for name in header[:20]) or "none"
            raise BatchError(f"{path}: no column {column!r} (its columns: {shown}): name the right one with {option}")
    return header


def _inspect_csv(path: Path, text_column: str, id_column: str | None) -> int:
    with _open_csv(path) as handle:
        rows = _csv_rows(handle)
        _csv_header(path, rows, text_column, id_column)
        return sum(1 for _ in rows)


def _inspect_parquet(path: Path, text_column: str, id_column: str | None) -> tuple[int, Literal["int64", "string"]]:
    pa = _pyarrow()
    try:
        meta = pa.parquet.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise BatchError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = meta.schema_arrow
    text_type = _column_type(path, schema, text_column, "--text-column")
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise BatchError(f"{path}: column {text_column!r} holds {text_type}, not text: name the text column "
                         "with --text-column")
    id_type: Literal["int64", "string"] = "string"
    if id_column is not None:
        kind = _column_type(path, schema, id_column, "--id-column")
        if pa.types.is_integer(kind):
            id_type = "int64"
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise BatchError(f"{path}: id column {id_column!r} holds {kind}: ids must be strings or integers")
    return int(meta.metadata.num_rows), id_type


def _column_type(path: Path, schema: Any, column: str, option: str) -> Any:
    if column not in schema.names:
        shown = ", ".join(repr(name) for name in schema.names[:20]) or "none"
        raise BatchError(f"{path}: no column {column!r} (its columns: {shown}): name the right one with {option}")
    return schema.field(column).type


def read_rows(source: InputFile, *, text_column: str, id_column: str | None, start: int = 0) -> Iterator[InputRow]:
    """The rows of `source` from row `start` on, in order."""
    if source.format == "jsonl":
        return _jsonl_rows(source.path, text_column, id_column, start)
    if source.format == "csv":
        return _csv_input_rows(source.path, text_column, id_column, start)
    return _parquet_rows(source.path, text_column, id_column, start)


def _row(row: int, line: int | None, record: dict[str, Any], text_column: str, id_column: str | None) -> InputRow:
    identity: RowId = row
    if id_column is not None:
        if id_column not in record:
            return InputRow(row, line, None, None, f"no {id_column!r} field")
        value = record[id_column]
        problem = _id_problem(value, id_column)
        if problem is not None:
            return InputRow(row, line, None, None, problem)
        identity = value
    if text_column not in record:
        return InputRow(row, line, identity, None, f"no {text_column!r} field")
    text = record[text_column]
    return InputRow(row, line, identity, text, text_problem(text))


def _jsonl_rows(path: Path, text_column: str, id_column: str | None, start: int) -> Iterator[InputRow]:
    row = 0
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            if row >= start:
                yield _jsonl_row(row, line, raw, text_column, id_column)
            row += 1


def _jsonl_row(row: int, line: int, raw: bytes, text_column: str, id_column: str | None) -> InputRow:
    known = row if id_column is None else None  # the id of a row that cannot be read
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return InputRow(row, line, known, None, "not valid UTF-8")
    except json.JSONDecodeError as exc:
        return InputRow(row, line, known, None, f"not valid JSON ({exc.msg}, column {exc.colno})")
    if not isinstance(record, dict):
        return InputRow(row, line, known, None, f"a JSON object was expected, got {_type_name(record)}")
    return _row(row, line, record, text_column, id_column)


def _csv_input_rows(path: Path, text_column: str, id_column: str | None, start: int) -> Iterator[InputRow]:
    with _open_csv(path) as handle:
        rows = _csv_rows(handle)
        header = _csv_header(path, rows, text_column, id_column)
        wanted = [column for column in (text_column, id_column) if column is not None]
        positions = {column: header.index(column) for column in wanted}
        for row, (line, record) in enumerate(rows):
            if row < start:
                continue
            values = {column: record[i] for column, i in positions.items() if i < len(record)}
            if any(_invalid_utf8(value) for value in values.values()):
                yield InputRow(row, line, row if id_column is None else None, None, "not valid UTF-8")
            else:
                yield _row(row, line, values, text_column, id_column)


def _invalid_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_rows(path: Path, text_column: str, id_column: str | None, start: int) -> Iterator[InputRow]:
    pa = _pyarrow()
    parquet = pa.parquet.ParquetFile(path)
    columns = [text_column] if id_column is None or id_column == text_column else [text_column, id_column]
    first, row = 0, 0
    for group in range(parquet.metadata.num_row_groups):  # skip whole row groups before `start`
        size = parquet.metadata.row_group(group).num_rows
        if row + size > start:
            break
        row += size
        first += 1
    groups = list(range(first, parquet.metadata.num_row_groups))
    if not groups:
        return
    for batch in parquet.iter_batches(row_groups=groups, columns=columns, batch_size=4096):
        for record in batch.to_pylist():
            if row >= start:
                yield _row(row, None, record, text_column, id_column)
            row += 1


def result_schema(id_type: Literal["int64", "string"] = "string") -> Any:
    """The Arrow schema of result rows: `id`, then the fields of `TaskMatch.to_dict()`."""
    pa = _pyarrow()
    candidate = pa.struct([("task_id", pa.string()), ("score", pa.float64()), ("confidence", pa.string())])
    capability = pa.struct([(name, pa.string()) for name in ("id", "label", "category", "category_id", "desc")])
    types = {"query": pa.string(), "matched": pa.bool_(), "chosen": candidate, "candidates": pa.list_(candidate),
             "ambiguous": pa.bool_(), "matcher": pa.string(), "type": pa.string(), "confidence": pa.string(),
             "reasoning": pa.string(), "capability": capability}
    return pa.schema([("id", pa.int64() if id_type == "int64" else pa.string()),
                      *((name, types[name]) for name in RESULT_FIELDS)])


class JsonlWriter:
    """Appends JSON lines to a file opened at a committed byte offset (anything after it is cut off)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        mode = "r+b" if path.exists() else "w+b"
        self._handle = path.open(mode)
        size = self._handle.seek(0, os.SEEK_END)
        if size < offset:
            self._handle.close()
            raise BatchError(f"{path}: {size:,} bytes, but {offset:,} were written by this run: the file was changed "
                             "outside it; start over with --overwrite")
        self._handle.truncate(offset)
        self._handle.seek(offset)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._handle.writelines(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                                for record in records)

    def commit(self) -> int:
        """Flush to disk; returns the byte offset everything before which is durable."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()


class ParquetParts:
    """Result rows of an unfinished run as numbered Parquet part files in `folder`, one per commit;
    `merge` writes them, in order, as one file with row groups of a fixed size."""

    def __init__(self, folder: Path, id_type: Literal["int64", "string"], parts: int = 0) -> None:
        self._pa = _pyarrow()
        self._schema = result_schema(id_type)
        self._string_ids = id_type == "string"
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):  # written after the last commit: redone
            if int(stale.stem.split("-")[1]) >= parts:
                stale.unlink()
        self.parts = parts
        self._pending: list[dict[str, Any]] = []

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if self._string_ids:
            records = [{**r, "id": str(r["id"])} if isinstance(r["id"], int) else r for r in records]
        self._pending.extend(records)

    def commit(self) -> int:
        """Write the rows since the last commit as the next part file; returns the number of parts."""
        if self._pending:
            table = self._pa.Table.from_pylist(self._pending, schema=self._schema)
            sink = self._pa.BufferOutputStream()
            self._pa.parquet.write_table(table, sink)
            write_atomically(self.folder / f"part-{self.parts:08d}.parquet", sink.getvalue().to_pybytes(),
                             durable=True)
            self.parts += 1
            self._pending = []
        return self.parts

    def merge(self, output: Path) -> None:
        """Write every part, in order, to `output` (atomically) in row groups of a fixed size."""
        pa = self._pa
        tmp = output.with_name(f".{output.name}.merging")
        buffered: list[Any] = []
        rows = 0
        with pa.parquet.ParquetWriter(tmp, self._schema) as writer:
            for index in range(self.parts):
                table = pa.parquet.read_table(self.folder / f"part-{index:08d}.parquet", schema=self._schema)
                buffered.append(table)
                rows += table.num_rows
                while rows >= _ROW_GROUP_ROWS:
                    whole = pa.concat_tables(buffered)
                    writer.write_table(whole.slice(0, _ROW_GROUP_ROWS), row_group_size=_ROW_GROUP_ROWS)
                    rest = whole.slice(_ROW_GROUP_ROWS)
                    buffered, rows = [rest], rest.num_rows
            if rows or not self.parts:
                writer.write_table(pa.concat_tables(buffered) if buffered else self._schema.empty_table(),
                                   row_group_size=_ROW_GROUP_ROWS)
        os.replace(tmp, output)

    def close(self) -> None:
        self._pending = []
