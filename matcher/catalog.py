"""The task catalog: validated, immutable task records loaded from YAML/JSON files or dicts.

Validation happens here, once, at the boundary (pydantic); everything downstream trusts a
`Catalog`. Every record of every file is checked before anything is kept: the problems come back
together in one `CatalogError`, each naming the file, line, task and field, and nothing is
half-loaded. Files are read defensively (size limit, no YAML anchors or aliases, bounded nesting),
because a catalog path may come from a user. Parsing YAML is the slow part of a load, so a cache
folder can keep each YAML file's parsed records (`load_catalog(..., cache_dir=)`).
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import logging
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from rapidfuzz import fuzz, process
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from .cachefiles import read_cache_file, write_atomically
from .errors import CatalogError, CatalogWarning, ScopeError, UnknownTaskError
from .text import content_terms, normalize

__all__ = ["Catalog", "Task", "default_catalog", "load_catalog"]

_ID_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_CATALOG_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl")
_PROFILE_FIELDS = ("title", "description", "keywords", "phrases")
_MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any real catalog, far below what hurts memory
_MAX_DEPTH = 100  # nesting levels in a file or an example; deeper input is refused, not recursed into
_MAX_LISTED = 50  # problems spelled out in one CatalogError message; `errors` keeps them all
_SHAPE = "a list of task records or a mapping with the single key 'tasks'"
_TOO_DEEP = f"nested deeper than {_MAX_DEPTH} levels"
_JSON_VALUE_ERROR = "json_value"
_ONE_KEY = "each key may appear once in a mapping"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_PARSED_FORMAT = 1  # layout of a parsed-YAML cache entry (`_ParsedYaml`)
_MAX_PARSED_BYTES_PER_CHAR = 8  # a cache entry's JSON is about as long as the YAML it came from

_log = logging.getLogger(__name__)

_Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]
_ShortText = Annotated[_Text, StringConstraints(max_length=200)]
_LongText = Annotated[_Text, StringConstraints(max_length=4000)]
_Phrase = Annotated[_Text, StringConstraints(max_length=1000)]
_Keyword = Annotated[_Text, StringConstraints(max_length=100)]
_Weight = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=False)]


def _json_example(example: dict[str, Any]) -> dict[str, Any]:
    """Refuse what JSON cannot carry (NaN, infinities, dates, sets, non-string keys, deep nesting).

    Examples are served in JSON responses and hashed into the fingerprint as JSON, so a value
    that JSON cannot represent must fail here, naming its path, rather than break a request later.
    """
    stack: list[tuple[object, tuple[str | int, ...]]] = [(example, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > _MAX_DEPTH:
            raise _example_error(path, _TOO_DEEP)
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise _example_error(path, f"key {key!r} must be a string")
            stack.extend((value[key], (*path, key)) for key in reversed(list(value)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            raise _example_error(path, f"must be a finite number, got {value!r}")
        elif value is not None and not isinstance(value, (str, int, float)):
            hint = "; quote it to keep it a string" if isinstance(value, date) else ""
            raise _example_error(path, "must be a JSON value (string, number, boolean, null, list or "
                                       f"mapping), got {type(value).__name__}{hint}")
    return example


def _example_error(path: tuple[str | int, ...], reason: str) -> PydanticCustomError:
    """A pydantic error that carries the path inside the example, so the report can name it."""
    return PydanticCustomError(_JSON_VALUE_ERROR, "{reason}", {"reason": reason, "path": path})


class _LeaderboardEntry(BaseModel):
    """One model row of a task's leaderboard."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: _ShortText
    kind: Literal["open", "frontier"]
    quality: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None
    cost_per_request_micro_usd: Annotated[int, Field(ge=0, strict=True)] | None = None
    context_k: Annotated[int, Field(ge=0, strict=True)] | None = None
    run_mode: _ShortText | None = None


class _Leaderboard(BaseModel):
    """Optional per-task model ranking; `illustrative` marks sample data that is not measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: _ShortText = "quality"
    cost_unit: _ShortText = "per_request"
    recommended: _ShortText | None = None
    models: list[_LeaderboardEntry] = Field(default_factory=list)
    frontier: _LeaderboardEntry | None = None
    illustrative: StrictBool = False
    note: _LongText | None = None


class _TaskRecord(BaseModel):
    """Schema of one catalog record; see `matcher/data/catalog/SCHEMA.md`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, StringConstraints(strict=True, pattern=_ID_PATTERN, max_length=100)]
    kind: Literal["task", "unsupported"] = "task"
    title: _ShortText | None = None
    category: _ShortText | None = None
    has_blob_input: StrictBool = False
    default_scorer: _ShortText | None = None
    description: _LongText | None = None
    keywords: dict[_Keyword, _Weight] = Field(default_factory=dict)
    phrases: list[_Phrase] = Field(default_factory=list)
    examples: list[Annotated[dict[str, Any], AfterValidator(_json_example)]] = Field(default_factory=list)
    leaderboard: _Leaderboard | None = None

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords_from_list(cls, value: object) -> object:
        if isinstance(value, list):
            return dict.fromkeys(value, 1.0)
        return value

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords_reject_bool_weights(cls, value: object) -> object:
        if isinstance(value, Mapping):
            for term, weight in value.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise ValueError(f"weight of keyword {term!r} must be a number in (0, 1]")
        return value

    @model_validator(mode="after")
    def _profile_not_empty(self) -> _TaskRecord:
        if not any(getattr(self, name) for name in _PROFILE_FIELDS):
            raise ValueError(
                "profile is empty: give at least one of title, description, keywords or phrases"
            )
        return self


@dataclass(frozen=True)
class Task:
    """One catalog entry: a benchmark task, or an out-of-scope profile when `kind == "unsupported"`."""

    id: str
    kind: str = "task"
    title: str | None = None
    category: str | None = None
    has_blob_input: bool = False
    default_scorer: str | None = None
    description: str | None = None
    keywords: tuple[tuple[str, float], ...] = ()
    phrases: tuple[str, ...] = ()
    examples: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    leaderboard: Mapping[str, Any] | None = field(default=None, repr=False)

    def to_dict(self, *, examples_n: int | None = 0) -> dict[str, Any]:
        """JSON-ready record; `examples_n` examples are included (all when None)."""
        record: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "category": self.category,
            "has_blob_input": self.has_blob_input,
            "default_scorer": self.default_scorer,
            "description": self.description,
            "keywords": dict(self.keywords),
            "phrases": list(self.phrases),
        }
        chosen = self.examples if examples_n is None else self.examples[: max(examples_n, 0)]
        if examples_n != 0:
            record["examples"] = [json.loads(json.dumps(example)) for example in chosen]
        return record

    def to_record(self) -> dict[str, Any]:
        """The whole record, examples and leaderboard included: what `Catalog.from_records` reads back."""
        return {**self.to_dict(examples_n=None), "leaderboard": self.leaderboard}

    @classmethod
    def _from_record(cls, record: _TaskRecord) -> Task:
        keywords = tuple(sorted((term, float(weight)) for term, weight in record.keywords.items()))
        return cls(
            id=record.id,
            kind=record.kind,
            title=record.title,
            category=record.category,
            has_blob_input=record.has_blob_input,
            default_scorer=record.default_scorer,
            description=record.description,
            keywords=keywords,
            phrases=tuple(record.phrases),
            examples=tuple(record.examples),
            leaderboard=(None if record.leaderboard is None
                         else record.leaderboard.model_dump(mode="json")),
        )


class Catalog:
    """An immutable set of tasks (and out-of-scope profiles), ordered by id."""

    def __init__(self, entries: Iterable[Task], *, source: str = "<records>") -> None:
        by_id: dict[str, Task] = {}
        for entry in entries:
            if entry.id in by_id:
                raise CatalogError(
                    f"{source}: duplicate task id {entry.id!r}: field 'id' must be unique",
                    source=source, task_id=entry.id, field="id",
                )
            by_id[entry.id] = entry
        ordered = [by_id[task_id] for task_id in sorted(by_id)]
        self._source = source
        self._profiles: tuple[Task, ...] = tuple(ordered)
        self._tasks: tuple[Task, ...] = tuple(t for t in ordered if t.kind == "task")
        self._by_id = {t.id: t for t in self._tasks}
        if not self._tasks:
            raise CatalogError(f"{source}: the catalog has no tasks", source=source, field="tasks")
        if not any(_has_content_words(profile) for profile in ordered):
            named = ", ".join(repr(profile.id) for profile in ordered[:_MAX_LISTED])
            raise CatalogError(
                f"{source}: task {named}: field 'profile': no task has a content word: titles, descriptions, "
                "keywords and phrases hold only stop words, which matching ignores; add words that describe "
                "each task", source=source, task_id=ordered[0].id, field="profile")
        self._fingerprint = _fingerprint(self._profiles)
        _warn_shared_terms(self._profiles, source)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, source: str = "<records>") -> Catalog:
        """Validate an iterable of dicts (at least `id` each) into a catalog.

        Every record is checked first; all problems are raised together in one `CatalogError`.
        """
        problems = _Problems()
        raws = [_RawRecord(record, number) for number, record in enumerate(records, start=1)]
        tasks = _validate_records(raws, source, problems, {})
        problems.raise_if_any(source)
        return cls(tasks, source=source)

    @property
    def source(self) -> str:
        """Where the catalog came from: a path or `<records>`."""
        return self._source

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical content: equal catalogs share it whatever their file order."""
        return self._fingerprint

    def list(self) -> builtins.list[Task]:
        """Every task (not out-of-scope profiles), sorted by id."""
        return list(self._tasks)

    def profiles(self) -> builtins.list[Task]:
        """Tasks and out-of-scope profiles together, sorted by id: what the index is built on."""
        return list(self._profiles)

    def get(self, task_id: str) -> Task:
        """The task with this id; an unknown id raises `UnknownTaskError` with the closest ids."""
        try:
            return self._by_id[task_id]
        except (KeyError, TypeError):
            raise UnknownTaskError(str(task_id), self.suggest(str(task_id))) from None

    def suggest(self, task_id: str, *, limit: int = 3) -> tuple[str, ...]:
        """Task ids closest to `task_id` by edit similarity, best first (ties by id)."""
        return _closest(task_id, list(self._by_id), limit=limit)

    def updated(self, *, add: Iterable[Task | Mapping[str, Any]] = (),
                replace: Iterable[Task | Mapping[str, Any]] = (), remove: Iterable[str] = ()) -> Catalog:
        """A new catalog: this one's tasks and out-of-scope profiles with `add` records added,
        `replace` records put in place of those with their ids, and the `remove` ids dropped,
        validated as a whole (`CatalogError` naming the record). This catalog is unchanged.

        Adding an id that exists, or naming one in two of the lists, is a `CatalogError`;
        replacing or removing an id that does not exist is an `UnknownTaskError` naming the closest.
        """
        adds = [_as_record(entry, "add") for entry in _entries(add, "add")]
        replacements = [_as_record(entry, "replace") for entry in _entries(replace, "replace")]
        removals = _scope_values(remove, "remove")
        present = {profile.id for profile in self._profiles}
        named: dict[str, str] = {}
        for what, ids in (("add", [r.get("id") for r in adds]), ("replace", [r.get("id") for r in replacements]),
                          ("remove", removals)):
            for task_id in ids:
                if not isinstance(task_id, str):
                    raise CatalogError(f"{self._source}: {what}: every record needs a string 'id', got {task_id!r}",
                                       source=self._source, field="id")
                if task_id in named:
                    raise CatalogError(f"{self._source}: task {_shown(task_id)} is named twice (in {named[task_id]} "
                                       f"and {what}): name each id once", source=self._source, task_id=task_id,
                                       field="id")
                named[task_id] = what
                if what == "add" and task_id in present:
                    raise CatalogError(f"{self._source}: add: task {_shown(task_id)} is already in the catalog: "
                                       "pass it in replace to change it", source=self._source, task_id=task_id,
                                       field="id")
                if what != "add" and task_id not in present:
                    raise UnknownTaskError(task_id, _closest(task_id, sorted(present)))
        dropped = {task_id for task_id, what in named.items() if what != "add"}
        kept = [profile.to_record() for profile in self._profiles if profile.id not in dropped]
        source = self._source if self._source.endswith(" (updated)") else f"{self._source} (updated)"
        return Catalog.from_records([*kept, *replacements, *adds], source=source)

    def categories(self) -> builtins.list[str]:
        """Every category a task of the catalog has, sorted."""
        return sorted({task.category for task in self._tasks if task.category is not None})

    def select(self, *, tasks: Iterable[str] | None = None,
               categories: Iterable[str] | None = None) -> frozenset[str]:
        """Ids of the tasks a request is scoped to: those in `tasks` (all when None) whose category
        is in `categories` (any when None).

        Raises `ScopeError` for an id or category the catalog lacks (naming the closest) and for a
        scope that selects no task; `TypeError` for a plain string where a list of them is due.
        """
        chosen = set(self._by_id)
        if tasks is not None:
            ids = _scope_values(tasks, "tasks")
            for task_id in ids:
                if task_id not in self._by_id:
                    raise ScopeError(f"scope: unknown task id {_shown(task_id)}", self.suggest(task_id))
            chosen &= set(ids)
        if categories is not None:
            wanted = _scope_values(categories, "categories")
            known = self.categories()
            for category in wanted:
                if category not in known:
                    raise ScopeError(f"scope: no task has category {_shown(category)}",
                                     _closest(category, known))
            chosen = {task_id for task_id in chosen if self._by_id[task_id].category in wanted}
        if not chosen:
            raise ScopeError("scope: the tasks and categories given select no task together: widen one of them")
        return frozenset(chosen)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} tasks from {self._source!r}, fingerprint={self._fingerprint[:12]})"


def load_catalog(path: str | Path, *, cache_dir: str | Path | None = None) -> Catalog:
    """Load a YAML, JSON or JSON-lines catalog file, or a directory of them (sorted by name).

    Every file and record is checked before anything is kept; all problems are raised together
    in one `CatalogError` whose `errors` lists them. With `cache_dir`, each YAML file's parsed
    records are kept there (keyed by the file's bytes and this parser's code), so a later load of
    an unchanged file skips the YAML parse; validation always runs, and a load that finds any
    problem is redone from the files themselves, so errors name the same lines either way.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in _CATALOG_SUFFIXES and p.is_file())
        if not files:
            raise CatalogError(f"{root}: no catalog files (*.yaml, *.yml, *.json, *.jsonl) in directory",
                               source=str(root))
    elif root.is_file():
        files = [root]
    else:
        raise CatalogError(f"{root}: no such catalog file or directory", source=str(root))
    parsed = _ParsedYaml(Path(cache_dir)) if cache_dir is not None else None
    tasks, problems = _load_files(files, parsed)
    if problems.found and parsed is not None and parsed.hits:
        tasks, problems = _load_files(files, None)  # cached records know no field lines
    problems.raise_if_any(str(root))
    return Catalog(tasks, source=str(root))


def _load_files(files: Sequence[Path], parsed: _ParsedYaml | None) -> tuple[list[Task], _Problems]:
    """The tasks of `files` in order, and every problem met reading and validating them."""
    problems = _Problems()
    seen: dict[str, tuple[str, _RawRecord]] = {}
    tasks: list[Task] = []
    for file in files:
        tasks.extend(_validate_records(_read_file(file, problems, parsed), str(file), problems, seen))
    return tasks, problems


_DEFAULT: Catalog | None = None


def default_catalog() -> Catalog:
    """The catalog bundled with the package (loaded once, then shared).

    Its parsed YAML is cached in the default cache folder (`TASK_MATCHER_CACHE`, else
    `~/.cache/task-matcher`), so a fresh process reads it in milliseconds.
    """
    global _DEFAULT
    if _DEFAULT is None:
        from .semantic import default_cache_dir

        with resources.as_file(resources.files("matcher") / "data" / "catalog") as folder:
            _DEFAULT = load_catalog(folder, cache_dir=default_cache_dir())
    return _DEFAULT


class _ParsedYaml:
    """Parsed YAML catalog files kept in a cache folder as JSON, keyed by the file's text and this
    module's code (a changed parser never reads an old entry).

    An entry holds each record's data and line. One that cannot be read or has the wrong shape
    is a miss; a file whose data JSON cannot hold exactly (dates, sets, non-string keys) is
    not cached. Failing to write is not an error: the cache only saves time.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = 0

    def _path(self, text: str) -> tuple[Path, str] | None:
        code = _parser_digest()
        if code is None:
            return None
        key = hashlib.sha256(f"{code}\0{text}".encode()).hexdigest()
        return self.folder / f"catalog-{key[:24]}.json", key

    def get(self, text: str) -> list[_RawRecord] | None:
        """The records of `text` as parsed before, or None."""
        where = self._path(text)
        if where is None:
            return None
        path, key = where
        try:
            blob = read_cache_file(path, max_bytes=_MAX_PARSED_BYTES_PER_CHAR * len(text) + 1024)
            if blob is None:
                return None
            entry = json.loads(blob)
            if not (isinstance(entry, dict) and entry.get("format") == _PARSED_FORMAT and entry.get("key") == key
                    and isinstance(entry.get("records"), list)):
                raise ValueError("not a parsed catalog entry of this parser")
            records = []
            for number, item in enumerate(entry["records"], start=1):
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], int)):
                    raise ValueError(f"record #{number} is not [data, line]")
                records.append(_RawRecord(item[0], number, item[1]))
        except (OSError, ValueError) as exc:
            _log.debug("parsed catalog cache %s not used: %s", path, exc)
            return None
        self.hits += 1
        return records

    def put(self, text: str, records: Sequence[_RawRecord]) -> None:
        """Keep the records of `text`, when JSON holds their data exactly."""
        where = self._path(text)
        if where is None:
            return
        path, key = where
        rows = [[raw.data, raw.line] for raw in records]
        try:
            blob = json.dumps({"format": _PARSED_FORMAT, "key": key, "records": rows}, ensure_ascii=False,
                              allow_nan=False, separators=(",", ":"))
            if json.loads(blob)["records"] != rows:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(path, blob.encode("utf-8"))
        except (OSError, TypeError, ValueError, RecursionError) as exc:
            _log.debug("parsed catalog not cached at %s: %s", path, exc)


@functools.cache
def _parser_digest() -> str | None:
    """Digest of what turns a YAML text into records: this module's source and PyYAML's version."""
    try:
        source = Path(__file__).read_bytes()
    except OSError:
        return None
    return hashlib.sha256(b"\0".join([str(_PARSED_FORMAT).encode(), yaml.__version__.encode(), source])).hexdigest()


class _Problems:
    """Every problem found while loading, raised at the end as one `CatalogError`."""

    def __init__(self) -> None:
        self.found: list[CatalogError] = []

    def add(self, source: str, message: str, *, line: int | None = None, column: int | None = None,
            task_id: str | None = None, field: str | None = None) -> None:
        """Record one problem; its message starts with `source:line:column` as far as known."""
        where = source if line is None else f"{source}:{line}" if column is None else f"{source}:{line}:{column}"
        self.found.append(CatalogError(f"{where}: {message}", source=source, task_id=task_id,
                                       field=field, line=line))

    def raise_if_any(self, where: str) -> None:
        """Raise the one problem found, or one error listing them all (the first `_MAX_LISTED`)."""
        if not self.found:
            return
        rank: dict[str | None, int] = {}
        for problem in self.found:
            rank.setdefault(problem.source, len(rank))
        found = sorted(self.found, key=lambda problem: (rank[problem.source], problem.line or 0))
        first = found[0]
        if len(found) == 1:
            raise first
        listed = "".join(f"\n  {problem}" for problem in found[:_MAX_LISTED])
        hidden = len(found) - _MAX_LISTED
        more = f"\n  and {hidden} more" if hidden > 0 else ""
        raise CatalogError(
            f"{where}: {len(found)} problems, nothing was loaded:{listed}{more}",
            source=first.source, task_id=first.task_id, field=first.field, line=first.line,
            errors=tuple(found),
        )


@dataclass(frozen=True)
class _RawRecord:
    """One record as read: its data, its 1-based number in the file, its line and YAML node."""

    data: Any
    number: int
    line: int | None = None
    node: yaml.Node | None = None

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """Line of the field at `loc` when the YAML node tree knows it, else the record's line."""
        return self.line if self.node is None else _node_line(self.node, loc)


class _UniqueKeys:
    """Mapping construction that refuses a key given twice (mixed into both catalog loaders)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping whose keys are all distinct: YAML would silently keep the last of two."""
        first_seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[attr-defined]
            try:
                first = first_seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not key_node:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first at line "
                                       f"{first.start_mark.line + 1}): {_ONE_KEY}", key_node.start_mark)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)  # type: ignore[misc]
        return mapping


class _CatalogLoader(_UniqueKeys, yaml.SafeLoader):
    """A SafeLoader that refuses anchors, aliases and deep nesting.

    Aliases can expand a few lines into gigabytes ("billion laughs") and deep nesting exhausts
    the stack; catalogs need neither, so both stop at the offending node with its position.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node after checking it is no anchor or alias and not nested too deeply."""
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            what = "alias '*" if isinstance(event, yaml.AliasEvent) else "anchor '&"
            raise ComposerError(None, None, f"YAML {what}{event.anchor}' is not allowed in catalog files: "
                                "write the value out in full", mark)
        if self._depth >= _MAX_DEPTH:
            raise ComposerError(None, None, _TOO_DEEP, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_FAST_LOADER_BASE: Any = getattr(yaml, "CSafeLoader", None)


def _fast_loader(text: str) -> Any | None:
    """A libyaml loader for `text` when it is safe to use one, else None (use `_CatalogLoader`).

    libyaml parses several times faster than PyYAML's Python parser, but it composes anchors and
    aliases and nests without the checks of `_CatalogLoader.compose_node`. So its events are
    scanned first: a text with an anchor, an alias or deep nesting gets the checking loader,
    which reports it exactly as before.
    """
    if _FAST_LOADER_BASE is None:
        return None
    depth = 0
    for event in yaml.parse(text, Loader=_FAST_LOADER_BASE):
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            return None
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth >= _MAX_DEPTH - 1:
                return None
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return _FastCatalogLoader(text)


if _FAST_LOADER_BASE is not None:
    class _FastCatalogLoader(_UniqueKeys, _FAST_LOADER_BASE):  # type: ignore[misc]
        """libyaml's safe loader with the catalog's duplicate-key check (see `_fast_loader`)."""


def _read_file(file: Path, problems: _Problems, parsed: _ParsedYaml | None = None) -> list[_RawRecord]:
    """The records of one catalog file; a file that cannot be read or parsed adds a problem instead."""
    source = str(file)
    try:
        with file.open("rb") as handle:
            blob = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.add(source, f"cannot read catalog file: {exc.strerror or exc}")
        return []
    if len(blob) > _MAX_FILE_BYTES:
        problems.add(source, f"file is larger than {_MAX_FILE_BYTES // 2**20} MiB, the limit for one "
                             "catalog file: split it into several files in a directory")
        return []
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob.count(b"\n", 0, exc.start) + 1
        problems.add(source, f"catalog files must be UTF-8 text: invalid byte 0x{blob[exc.start]:02X} at "
                             f"offset {exc.start} ({exc.reason}); save the file as UTF-8", line=line)
        return []
    if file.suffix == ".jsonl":
        return _jsonl_records(text, source, problems)
    if file.suffix == ".json":
        return _json_records(text, source, problems)
    if parsed is None:
        return _yaml_records(text, source, problems)
    cached = parsed.get(text)
    if cached is not None:
        return cached
    before = len(problems.found)
    records = _yaml_records(text, source, problems)
    if len(problems.found) == before:
        parsed.put(text, records)
    return records


def _yaml_records(text: str, source: str, problems: _Problems) -> list[_RawRecord]:
    """Parse YAML keeping the node tree, so each record (and field) knows its line."""
    loader: Any = None
    try:
        try:
            loader = _fast_loader(text)
            if loader is not None:
                root = loader.get_single_node()
                data = None if root is None else loader.construct_document(root)
        except (yaml.YAMLError, ValueError, RecursionError):  # reported by the checking loader, as always
            if loader is not None:
                loader.dispose()
            loader = None
        if loader is None:
            loader = _CatalogLoader(text)
            root = loader.get_single_node()
            data = None if root is None else loader.construct_document(root)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        message, line, column = _yaml_error(exc, text)
        problems.add(source, f"cannot parse catalog file: {message}", line=line, column=column)
        return []
    finally:
        if loader is not None:
            loader.dispose()
    shape = _shape_problem(data)
    if shape is not None:
        message, key = shape
        line = None if root is None else _node_line(root, () if key is None else (str(key),))
        problems.add(source, message, line=line, field="tasks")
        return []
    entry = _entry(root, "tasks")
    sequence = root if entry is None else entry[1]
    assert isinstance(sequence, yaml.SequenceNode)  # _shape_problem accepted the document
    return [_RawRecord(record, number, node.start_mark.line + 1, node)
            for number, (record, node) in enumerate(zip(_record_list(data), sequence.value, strict=True), start=1)]


def _yaml_error(exc: BaseException, text: str) -> tuple[str, int | None, int | None]:
    """A YAML failure as (problem, line, column) in the file's own terms, not PyYAML's "<unicode string>"."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").removeprefix("but ")
        if exc.problem and exc.context:
            at = ("" if exc.context_mark is None
                  else f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}")
            problem += f" ({exc.context}{at})"
        return problem, None if mark is None else mark.line + 1, None if mark is None else mark.column + 1
    if isinstance(exc, yaml.reader.ReaderError):
        position = int(exc.position)
        column = position - text.rfind("\n", 0, position)
        return (f"character U+{int(exc.character):04X}: {exc.reason}", text.count("\n", 0, position) + 1,
                column)
    if isinstance(exc, RecursionError):
        return _TOO_DEEP, None, None
    return str(exc), None, None


def _entry(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key, value) nodes of `key` in a mapping node: the last one, as in the loaded data."""
    if not isinstance(node, yaml.MappingNode):
        return None
    pairs = [(name, value) for name, value in node.value if isinstance(name, yaml.ScalarNode) and name.value == key]
    return pairs[-1] if pairs else None


def _node_line(node: yaml.Node, loc: Sequence[str | int]) -> int:
    """1-based line of the deepest key or item along `loc` that the node tree has."""
    line = node.start_mark.line + 1
    for part in loc:
        entry = _entry(node, str(part))
        if entry is not None:
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _json_value(text: str) -> tuple[Any, tuple[str, int | None, int | None] | None]:
    """Parse JSON: (value, None), or (None, (problem, line, column)) when it is invalid or too deep."""
    try:
        value = json.loads(text, object_pairs_hook=_distinct_keys)
    except json.JSONDecodeError as exc:
        return None, (exc.msg, exc.lineno, exc.colno)
    except (ValueError, RecursionError) as exc:  # ValueError: an integer too long to convert
        return None, (_TOO_DEEP if isinstance(exc, RecursionError) else str(exc), None, None)
    if _too_deep(value):
        return None, (_TOO_DEEP, None, None)
    return value, None


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all distinct: `json` would silently keep the last of two."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"duplicate key {key!r}: {_ONE_KEY}")
        mapping[key] = value
    return mapping


def _json_records(text: str, source: str, problems: _Problems) -> list[_RawRecord]:
    """Parse a JSON file; record lines come from a scan of the top level when it has the usual shape."""
    data, failure = _json_value(text)
    if failure is not None:
        message, line, column = failure
        problems.add(source, f"cannot parse catalog file: {message}", line=line, column=column)
        return []
    shape = _shape_problem(data)
    if shape is not None:
        problems.add(source, shape[0], field="tasks")
        return []
    records = _record_list(data)
    lines: Sequence[int | None] = _json_item_lines(text) or []
    if len(lines) != len(records):
        lines = [None] * len(records)
    return [_RawRecord(record, number, line)
            for number, (record, line) in enumerate(zip(records, lines, strict=True), start=1)]


def _jsonl_records(text: str, source: str, problems: _Problems) -> list[_RawRecord]:
    """One record per non-blank line; a line that does not parse is reported and the rest still checked."""
    records: list[_RawRecord] = []
    number = 0
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        number += 1
        record, failure = _json_value(content)
        if failure is not None:
            message, _, column = failure
            problems.add(source, f"cannot parse catalog file: {message}", line=line, column=column)
            continue
        records.append(_RawRecord(record, number, line))
    return records


def _shape_problem(data: object) -> tuple[str, object] | None:
    """Why a parsed file is not `[records]` or `{tasks: [records]}`, with the key to point at; None if it is."""
    if isinstance(data, list):
        return None
    if isinstance(data, Mapping):
        if set(data) == {"tasks"}:
            if isinstance(data["tasks"], list):
                return None
            return f"field 'tasks' must be a list of task records, got {_describe(data['tasks'])}", "tasks"
        extra = [key for key in data if key != "tasks"]
        if not extra:
            return f"expected {_SHAPE}, got an empty mapping", None
        names = ", ".join(repr(key) for key in extra)
        hint = ""
        if "tasks" not in data:
            close = process.extractOne("tasks", [str(key) for key in extra], scorer=fuzz.ratio,
                                       processor=None, score_cutoff=70)
            if close is not None:
                hint = f"; did you mean 'tasks' instead of {close[0]!r}?"
            elif "id" in data:
                hint = "; a single record must still be inside a list"
        plural = "s" if len(extra) > 1 else ""
        return f"unexpected top-level key{plural} {names}: expected {_SHAPE}{hint}", extra[0]
    if data is None:
        return f"the file is empty: expected {_SHAPE}", None
    return f"expected {_SHAPE}, got {_describe(data)}", None


def _record_list(data: object) -> list[Any]:
    """The records of data that passed `_shape_problem`."""
    if isinstance(data, Mapping):
        data = data["tasks"]
    assert isinstance(data, list)
    return data


def _describe(value: object) -> str:
    """A value's kind in the words of a YAML or JSON author, not Python's type names."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _too_deep(value: object) -> bool:
    """Whether lists and mappings nest deeper than `_MAX_DEPTH` (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > _MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _skip_space(text: str, position: int) -> int:
    """The first position at or after `position` that is not JSON whitespace."""
    match = _JSON_SPACE.match(text, position)
    return position if match is None else match.end()


def _json_item_lines(text: str) -> list[int] | None:
    """1-based start line of each record of valid JSON `[...]` or `{"tasks": [...]}`; None for other shapes."""
    decoder = json.JSONDecoder()
    try:
        position = _skip_space(text, 0)
        wrapped = text.startswith("{", position)
        if wrapped:
            key, position = decoder.raw_decode(text, _skip_space(text, position + 1))
            position = _skip_space(text, position)
            if key != "tasks" or not text.startswith(":", position):
                return None
            position = _skip_space(text, position + 1)
        if not text.startswith("[", position):
            return None
        lines: list[int] = []
        line, counted = 1, 0
        position = _skip_space(text, position + 1)
        while not text.startswith("]", position):
            line += text.count("\n", counted, position)
            counted = position
            lines.append(line)
            _, position = decoder.raw_decode(text, position)
            position = _skip_space(text, position)
            if text.startswith(",", position):
                position = _skip_space(text, position + 1)
        if wrapped and not text.startswith("}", _skip_space(text, position + 1)):
            return None
    except (ValueError, IndexError):
        return None
    return lines


def _validate_records(raws: Sequence[_RawRecord], source: str, problems: _Problems,
                      seen: dict[str, tuple[str, _RawRecord]]) -> list[Task]:
    """Validate every record, adding each problem (and each id already in `seen`) to `problems`."""
    tasks: list[Task] = []
    for raw in raws:
        if not isinstance(raw.data, Mapping):
            problems.add(source, f"record #{raw.number} must be a mapping of fields (an 'id' and at least "
                                 f"one of title, description, keywords or phrases), got {_describe(raw.data)}",
                         line=raw.line)
            continue
        raw_id = raw.data.get("id")
        task_id = raw_id if isinstance(raw_id, str) else None
        label = f"task {raw_id!r}" if task_id is not None else f"record #{raw.number}"
        try:
            tasks.append(Task._from_record(_TaskRecord.model_validate(dict(raw.data))))
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                if error["type"] == _JSON_VALUE_ERROR:
                    loc += tuple(error["ctx"]["path"])
                where = ".".join(str(part) for part in loc) or "profile"
                problems.add(source, f"{label}: field {where!r}: {error['msg']}{_hint(error)}",
                             line=raw.line_of(loc), task_id=task_id, field=where)
        if task_id is None:
            continue
        if task_id in seen:
            first_source, first = seen[task_id]
            spot = f"line {first.line}" if first.line is not None else f"record #{first.number}"
            at = f"at {spot}" if first_source == source else f"in {first_source}, {spot}"
            problems.add(source, f"{label}: field 'id': duplicate task id {task_id!r} (first defined {at}); "
                                 "ids must be unique across the catalog",
                         line=raw.line_of(("id",)), task_id=task_id, field="id")
        else:
            seen[task_id] = (source, raw)
    return tasks


def _hint(error: ErrorDetails) -> str:
    """How to fix the two record errors whose pydantic message alone does not say: bad ids, unknown fields."""
    loc = tuple(error["loc"])
    if loc == ("id",) and error["type"] == "string_pattern_mismatch":
        return " (ids are kebab-case: lowercase letters and digits in words joined by single hyphens)"
    if len(loc) == 1 and error["type"] == "extra_forbidden":
        close = process.extractOne(str(loc[0]), list(_TaskRecord.model_fields), scorer=fuzz.ratio,
                                   processor=None, score_cutoff=70)
        if close is not None:
            return f"; did you mean {close[0]!r}?"
        return f"; known fields: {', '.join(_TaskRecord.model_fields)}"
    return ""


def _closest(value: str, choices: Sequence[str], *, limit: int = 3) -> tuple[str, ...]:
    """The `choices` closest to `value` by edit similarity (at least 50 of 100), best first, ties by name."""
    scored = process.extract(value, list(choices), scorer=fuzz.ratio, processor=None, score_cutoff=50,
                             limit=None)
    ranked = sorted(scored, key=lambda hit: (-hit[1], hit[0]))
    return tuple(hit[0] for hit in ranked[:limit])


_SHOWN_SCOPE_CHARS = 100


def _shown(value: str) -> str:
    """`value` quoted for a message, cut at `_SHOWN_SCOPE_CHARS`: a message must not grow with the request."""
    return repr(value) if len(value) <= _SHOWN_SCOPE_CHARS else f"{value[:_SHOWN_SCOPE_CHARS]!r}..."


def _entries(values: Iterable[Task | Mapping[str, Any]], name: str) -> builtins.list[Task | Mapping[str, Any]]:
    if isinstance(values, (str, bytes, Mapping, Task)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of tasks or records, got {type(values).__name__}")
    return list(values)


def _as_record(entry: Task | Mapping[str, Any], name: str) -> dict[str, Any]:
    """A `Task` or a record mapping as a plain record for `Catalog.from_records`."""
    if isinstance(entry, Task):
        return entry.to_record()
    if isinstance(entry, Mapping):
        return dict(entry)
    raise TypeError(f"{name} must hold Task objects or record mappings, got {type(entry).__name__}")


def _scope_values(values: Iterable[str], name: str) -> builtins.list[str]:
    """`values` as a list of strings; a plain string is refused, since it would scope by its characters."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}")
    listed = list(values)
    for value in listed:
        if not isinstance(value, str):
            raise TypeError(f"{name} must hold strings, got {type(value).__name__}")
    return listed


def _has_content_words(task: Task) -> bool:
    """Whether any profile text of `task` holds a word that is not a stop word (what matching reads)."""
    texts = [task.title or "", task.description or "", *(term for term, _ in task.keywords), *task.phrases]
    return any(content_terms(normalize(text)) for text in texts)


def _fingerprint(profiles: Sequence[Task]) -> str:
    canonical = [task.to_record() for task in profiles]
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _warn_shared_terms(profiles: Sequence[Task], source: str) -> None:
    owners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for task in profiles:
        for term, _weight in task.keywords:
            owners[("keyword", normalize(term))].add(task.id)
        for phrase in task.phrases:
            owners[("phrase", normalize(phrase))].add(task.id)
    for (what, text), ids in sorted(owners.items()):
        if len(ids) > 1:
            names = " and ".join(sorted(ids))
            warnings.warn(
                f"{source}: {what} {text!r} is shared by tasks {names}; it cannot tell them apart",
                CatalogWarning, stacklevel=3,
            )
