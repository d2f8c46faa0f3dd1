"""Leaderboards: the models scored on each task, ranked, and the pick to deploy.

A board comes from a task's own catalog record (``leaderboard:``) or from a catalog-side file
of boards built from eval results (`import_results`, ``task-matcher leaderboard import``). The
file wins for the tasks it holds. Boards never take part in matching, so they sit outside the
catalog's fingerprint: importing new results leaves the tuned config and the embedding cache valid.

Rules (one place, used by the import and by the HTTP route):

- **Ranking** (`rank_models`): quality descending; at equal quality the cheaper model first
  (``cost_per_request_micro_usd``), then the name; a model without a quality or cost sorts after
  those with one.
- **Recommended** (`recommended`): the curated pick when the board sets one, else the top-ranked
  ``open`` model with a quality, else None.
- **Frontier**: the board's own ``frontier`` entry; on import, the top-ranked ``frontier`` row.
- **Bad rows** (`import_results`): every problem of the file is reported at once, each with its
  line, and nothing is written: a missing or unknown key, a wrong type, a quality outside [0, 1],
  a negative cost or context, an unknown task (with the closest ids), or a model listed twice for
  one task (with both lines).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cachefiles import read_cache_file
from .catalog import Catalog, Task
from .errors import LeaderboardError

__all__ = ["Leaderboards", "board_body", "import_results", "leaderboards_path", "rank_models", "recommended"]

BOARDS_FORMAT = "task-matcher-leaderboards"
BOARDS_VERSION = 1
_ROW_KEYS = ("model", "kind", "task_id", "quality", "cost_per_request_micro_usd", "context_k")
_OPTIONAL_ROW_KEYS = ("run_mode",)
_KINDS = ("open", "frontier")
_MAX_NAME = 200
_MAX_BOARDS_BYTES = 64 * 1024 * 1024
_MAX_LISTED = 50
_BOARD_KEYS = frozenset({"metric", "cost_unit", "recommended", "models", "frontier", "illustrative", "note"})


def rank_models(models: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The models best first: quality descending, then cheaper, then by name (missing values last)."""
    def key(model: Mapping[str, Any]) -> tuple[bool, float, bool, int, str]:
        quality, cost = model.get("quality"), model.get("cost_per_request_micro_usd")
        return (quality is None, -float(quality or 0.0), cost is None, int(cost or 0), str(model["name"]))

    return sorted((dict(model) for model in models), key=key)


def recommended(board: Mapping[str, Any]) -> str | None:
    """The curated pick when set, else the top-ranked open model that has a quality, else None."""
    curated = board.get("recommended")
    if curated is not None:
        return str(curated)
    scored_open = [m for m in rank_models(board.get("models", ())) if m["kind"] == "open"
                   and m.get("quality") is not None]
    return str(scored_open[0]["name"]) if scored_open else None


def board_body(task: Task, boards: Leaderboards | None = None) -> dict[str, Any]:
    """The response of ``GET /v1/tasks/{id}/leaderboard``: the file's board for `task` if it has one,
    else the record's, else an empty board."""
    board: Mapping[str, Any] = (boards.get(task.id) if boards is not None else None) or task.leaderboard or {}
    frontier = board.get("frontier")
    return {
        "task_id": task.id,
        "metric": board.get("metric", "quality"),
        "cost_unit": board.get("cost_unit", "per_request"),
        "recommended": recommended(board),
        "models": rank_models(board.get("models", ())),
        "frontier": None if frontier is None else dict(frontier),
        "illustrative": bool(board.get("illustrative", False)),
        "note": board.get("note"),
    }


def leaderboards_path(catalog: str | Path) -> Path:
    """Where the boards of the catalog at `catalog` live: ``<name>.leaderboards.json`` beside it
    (outside a catalog directory, whose JSON files are all read as task records)."""
    path = Path(catalog)
    stem = path.name if path.is_dir() else path.stem
    return path.with_name(f"{stem}.leaderboards.json")


@dataclass(frozen=True)
class Leaderboards:
    """Ranked boards by task id, as built by `import_results` or read from a boards file."""

    boards: Mapping[str, Mapping[str, Any]]
    source: str = "<boards>"

    def get(self, task_id: str) -> Mapping[str, Any] | None:
        """The board of `task_id`, or None when this file has none for it."""
        return self.boards.get(task_id)

    def __len__(self) -> int:
        return len(self.boards)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the boards' canonical JSON."""
        blob = json.dumps(self.to_dict()["boards"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON: format, version and the boards, tasks by id."""
        return {"format": BOARDS_FORMAT, "version": BOARDS_VERSION,
                "boards": {task_id: dict(self.boards[task_id]) for task_id in sorted(self.boards)}}

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (a temporary file renamed into place)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2, ensure_ascii=False, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | Path, catalog: Catalog) -> Leaderboards:
        """Read a boards file and check it against `catalog`; `LeaderboardError` names what to fix."""
        source = str(path)
        try:
            blob = read_cache_file(Path(path), max_bytes=_MAX_BOARDS_BYTES)
            if blob is None:
                raise FileNotFoundError("no such file")
            data = json.loads(blob.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise LeaderboardError(f"{source}: cannot read the leaderboards file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != BOARDS_FORMAT or data.get("version") != BOARDS_VERSION:
            raise LeaderboardError(f"{source}: not a {BOARDS_FORMAT} version {BOARDS_VERSION} file (make one with "
                                   "`task-matcher leaderboard import RESULTS.jsonl`)")
        raw = data.get("boards")
        if not isinstance(raw, dict):
            raise LeaderboardError(f"{source}: 'boards' must map task ids to boards")
        problems: list[str] = []
        boards: dict[str, Mapping[str, Any]] = {}
        for task_id, board in raw.items():
            if task_id not in catalog:
                problems.append(f"{source}: board for {_unknown(catalog, str(task_id))}")
                continue
            problem = _board_problem(board)
            if problem is not None:
                problems.append(f"{source}: board of task {task_id!r}: {problem}")
                continue
            boards[task_id] = board
        _raise_if_any(problems, source)
        return cls(boards, source=source)


def import_results(path: str | Path, catalog: Catalog, *,
                   recommend: Mapping[str, str] | None = None) -> Leaderboards:
    """Boards from eval results: JSON lines of ``model`` (a public alias), ``kind`` (``open`` or
    ``frontier``), ``task_id``, ``quality`` (in [0, 1]), ``cost_per_request_micro_usd`` and
    ``context_k`` (non-negative integers), optionally ``run_mode``.

    `recommend` sets curated picks (task id -> an alias on that task's board). Raises one
    `LeaderboardError` listing every bad row (see the module docstring).
    """
    source = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LeaderboardError(f"{source}: cannot read eval results: {reason}") from None
    problems: list[str] = []
    rows: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        row, problem = _parse_row(line, catalog)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        assert row is not None
        task_id = row.pop("task_id")
        board = rows.setdefault(task_id, {})
        if row["name"] in board:
            first = board[row["name"]][0]
            problems.append(f"{where}: model {row['name']!r} is listed twice for task {task_id!r} (first at line "
                            f"{first}): keep one result per model and task")
            continue
        board[row["name"]] = (number, row)
    if not rows and not problems:
        problems.append(f"{source}: no result rows: expected one JSON object per line with keys {', '.join(_ROW_KEYS)}")
    boards: dict[str, Mapping[str, Any]] = {}
    for task_id in sorted(rows):
        models = rank_models(row for _, row in rows[task_id].values())
        frontiers = [m for m in models if m["kind"] == "frontier"]
        boards[task_id] = {"metric": "quality", "cost_unit": "per_request", "recommended": None,
                           "models": models, "frontier": frontiers[0] if frontiers else None,
                           "illustrative": False, "note": f"imported from {Path(path).name}"}
    for task_id, alias in sorted((recommend or {}).items()):
        if task_id not in catalog:
            problems.append(f"recommended pick for {_unknown(catalog, task_id)}")
        elif task_id not in boards:
            problems.append(f"recommended pick for task {task_id!r}: the results hold no model for it")
        elif alias not in {m["name"] for m in boards[task_id]["models"]}:
            names = ", ".join(repr(m["name"]) for m in boards[task_id]["models"])
            problems.append(f"recommended pick {alias!r} for task {task_id!r} is not on its board ({names})")
        else:
            boards[task_id] = {**boards[task_id], "recommended": alias}
    _raise_if_any(problems, source)
    return Leaderboards(boards, source=source)


def _parse_row(line: str, catalog: Catalog) -> tuple[dict[str, Any] | None, str | None]:
    """One result row as a board entry (with its task id), or the reason it is refused."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object with keys {', '.join(_ROW_KEYS)}"
    missing = [key for key in _ROW_KEYS if key not in row]
    unknown = sorted(set(row) - set(_ROW_KEYS) - set(_OPTIONAL_ROW_KEYS))
    if missing or unknown:
        parts = ([f"missing key(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
        return None, f"{'; '.join(parts)}; a row has {', '.join(_ROW_KEYS)} (optional: run_mode)"
    problems = [problem for problem in (
        _name_problem("model", row["model"]),
        None if row["kind"] in _KINDS else f"kind must be 'open' or 'frontier', got {row['kind']!r}",
        _quality_problem(row["quality"]),
        _count_problem("cost_per_request_micro_usd", row["cost_per_request_micro_usd"]),
        _count_problem("context_k", row["context_k"]),
        None if row.get("run_mode") is None else _name_problem("run_mode", row["run_mode"]),
    ) if problem is not None]
    task_id = row["task_id"]
    if not isinstance(task_id, str):
        problems.append(f"task_id must be a string, got {_json_type(task_id)}")
    elif task_id not in catalog:
        problems.append(_unknown(catalog, task_id))
    if problems:
        return None, "; ".join(problems)
    entry = {"name": row["model"], "kind": row["kind"], "quality": float(row["quality"]),
             "cost_per_request_micro_usd": row["cost_per_request_micro_usd"], "context_k": row["context_k"],
             "run_mode": row.get("run_mode"), "task_id": task_id}
    return entry, None


def _name_problem(field: str, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_NAME or any(c.isspace() for c in value):
        return f"{field} must be a non-empty name without spaces, at most {_MAX_NAME} characters, got {value!r:.60}"
    return None


def _quality_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        return f"quality must be a number in [0, 1], got {value!r:.60}"
    return None


def _count_problem(field: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{field} must be a non-negative integer, got {value!r:.60}"
    return None


def _json_type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _unknown(catalog: Catalog, task_id: str) -> str:
    close = catalog.suggest(task_id)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown task id {task_id[:100]!r}{hint}"


def _board_problem(board: object) -> str | None:
    """Why `board` is not a board this module wrote (keys, model rows), or None."""
    if not isinstance(board, dict) or not set(board) <= _BOARD_KEYS:
        return f"expected a mapping with keys among {', '.join(sorted(_BOARD_KEYS))}"
    models = board.get("models", [])
    entries: Sequence[object] = [*models, *([board["frontier"]] if board.get("frontier") else [])] \
        if isinstance(models, list) else [None]
    for model in entries:
        if not isinstance(model, dict) or model.get("kind") not in _KINDS or _name_problem("name", model.get("name")):
            return "each model needs a 'name' and a 'kind' of 'open' or 'frontier'"
        if model.get("quality") is not None and _quality_problem(model["quality"]):
            return f"model {model['name']!r}: {_quality_problem(model['quality'])}"
    return None


def _raise_if_any(problems: list[str], source: str) -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    if len(problems) == 1:
        raise LeaderboardError(problems[0], problems=tuple(problems))
    raise LeaderboardError(f"{source}: {len(problems)} problems:\n" + "\n".join(shown) + more,
                           problems=tuple(problems))
