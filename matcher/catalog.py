"""The task catalog: validated, immutable task records loaded from YAML/JSON files or dicts.

Validation happens here, once, at the boundary (pydantic); everything downstream trusts a
`Catalog`. A broken file raises one `CatalogError` naming the file, the task and the field, and
nothing is half-loaded.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from rapidfuzz import fuzz, process

from .errors import CatalogError, CatalogWarning, UnknownTaskError
from .text import normalize

__all__ = ["Catalog", "Task", "default_catalog", "load_catalog"]

_ID_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_CATALOG_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl")
_PROFILE_FIELDS = ("title", "description", "keywords", "phrases")

_Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]
_ShortText = Annotated[_Text, StringConstraints(max_length=200)]
_LongText = Annotated[_Text, StringConstraints(max_length=4000)]
_Phrase = Annotated[_Text, StringConstraints(max_length=1000)]
_Keyword = Annotated[_Text, StringConstraints(max_length=100)]
_Weight = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False, strict=False)]


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
    examples: list[dict[str, Any]] = Field(default_factory=list)
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
        self._fingerprint = _fingerprint(self._profiles)
        _warn_shared_terms(self._profiles, source)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, source: str = "<records>") -> Catalog:
        """Validate an iterable of dicts (at least `id` each) into a catalog."""
        return cls(_validate_records(list(records), source), source=source)

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
        scored = process.extract(
            task_id, list(self._by_id), scorer=fuzz.ratio, processor=None, score_cutoff=50,
            limit=None,
        )
        ranked = sorted(scored, key=lambda hit: (-hit[1], hit[0]))
        return tuple(hit[0] for hit in ranked[:limit])

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} tasks from {self._source!r}, fingerprint={self._fingerprint[:12]})"


def load_catalog(path: str | Path) -> Catalog:
    """Load a YAML, JSON or JSON-lines catalog file, or a directory of them (sorted by name)."""
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
    tasks: list[Task] = []
    origin: dict[str, Path] = {}
    for file in files:
        for task in _validate_records(_read_records(file), str(file)):
            if task.id in origin:
                raise CatalogError(
                    f"{file}: duplicate task id {task.id!r} (first defined in {origin[task.id]}): "
                    "field 'id' must be unique", source=str(file), task_id=task.id, field="id",
                )
            origin[task.id] = file
            tasks.append(task)
    return Catalog(tasks, source=str(root))


_DEFAULT: Catalog | None = None


def default_catalog() -> Catalog:
    """The catalog bundled with the package (loaded once, then shared)."""
    global _DEFAULT
    if _DEFAULT is None:
        with resources.as_file(resources.files("matcher") / "data" / "catalog") as folder:
            _DEFAULT = load_catalog(folder)
    return _DEFAULT


def _read_records(file: Path) -> list[Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{file}: cannot read catalog file: {exc}", source=str(file)) from exc
    try:
        if file.suffix == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"{file}: cannot parse catalog file: {exc}", source=str(file)) from exc
    if isinstance(data, Mapping) and set(data) == {"tasks"}:
        data = data["tasks"]
    if not isinstance(data, list):
        raise CatalogError(
            f"{file}: expected a list of task records or a mapping with one key 'tasks', "
            f"got {type(data).__name__}", source=str(file), field="tasks",
        )
    return data


def _validate_records(records: Sequence[Any], source: str) -> list[Task]:
    tasks: list[Task] = []
    for position, raw in enumerate(records):
        if not isinstance(raw, Mapping):
            raise CatalogError(
                f"{source}: record #{position + 1} must be a mapping, got {type(raw).__name__}",
                source=source,
            )
        raw_id = raw.get("id")
        label = f"task {raw_id!r}" if isinstance(raw_id, str) else f"record #{position + 1}"
        try:
            record = _TaskRecord.model_validate(dict(raw))
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "profile"
            raise CatalogError(
                f"{source}: {label}: field {where!r}: {error['msg']}",
                source=source, task_id=raw_id if isinstance(raw_id, str) else None,
                field=where,
            ) from None
        tasks.append(Task._from_record(record))
    return tasks


def _fingerprint(profiles: Sequence[Task]) -> str:
    canonical = [{**task.to_dict(examples_n=None), "leaderboard": task.leaderboard}
                 for task in profiles]
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
