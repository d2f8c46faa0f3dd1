"""Catalog generations: one validated catalog and config, pinned by fingerprint, served by every worker.

Several worker processes behind one port must give the same answer whichever of them a request
reaches. If each worker read the catalog and config files itself, an edit between two reads (a
worker restarted by the supervisor reads them again) would put two catalogs behind one port, and
a broken edit would make every replacement fail, in a loop. So the parent loads and validates
the files once into a `Generation`, writes it to a snapshot file (`write`) and hands the workers
the snapshot's path and the generation's fingerprint; each worker reads the snapshot (`read`),
which refuses any other fingerprint. A worker that cannot serve its generation leaves a note
(`report_failure`) for the parent to print (`reported_failures`) and stops, and the parent stops
the server instead of restarting it.

A reload is a new generation in the same folder: a `GenerationStore` holds the snapshots and a
pointer, ``current.json``, to the one to serve now. Whoever reloads (the parent on SIGHUP, a
worker on the admin route) loads and validates the files, writes the snapshot and then replaces
the pointer atomically, under a lock so two reloads never interleave; every worker watches the
pointer and swaps to the generation it names, and a restarted worker starts on it. A generation
also carries the catalog's leaderboards file, when there is one (`matcher.leaderboard`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cachefiles import read_cache_file
from .catalog import Catalog, default_catalog, load_catalog
from .config import MatcherConfig
from .errors import CatalogError, CatalogWarning
from .leaderboard import Leaderboards, leaderboards_path

__all__ = ["Generation", "GenerationStore", "report_failure", "reported_failures"]

GENERATION_FORMAT = "task-matcher-generation"
GENERATION_VERSION = 1
# A snapshot holds a whole catalog: at most a few catalog files' worth (16 MiB each).
_MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
_FAILURE_SUFFIX = ".failed"
_POINTER = "current.json"
_LOCK = ".publish.lock"


@dataclass(frozen=True)
class Generation:
    """A validated catalog, the config to match it with (None: the matcher's own choice) and its
    leaderboards file (None: the records' own boards only)."""

    catalog: Catalog
    config: MatcherConfig | None = None
    leaderboards: Leaderboards | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the catalog's fingerprint, the config's settings and the boards: equal generations share it.

        Computed once (every part is frozen): the server reads it on every response."""
        config = None if self.config is None else self.config.to_dict()
        boards = None if self.leaderboards is None else self.leaderboards.fingerprint
        blob = json.dumps({"catalog": self.catalog.fingerprint, "config": config, "leaderboards": boards},
                          sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, catalog: Path | None = None, config: Path | None = None,
             leaderboards: Path | None = None) -> Generation:
        """Read and validate a catalog (default: the bundled one), a config file and a leaderboards
        file, once; without `leaderboards`, the catalog-side file (`leaderboards_path`) when it exists."""
        tasks = load_catalog(catalog) if catalog is not None else default_catalog()
        if leaderboards is None and catalog is not None and leaderboards_path(catalog).is_file():
            leaderboards = leaderboards_path(catalog)
        return cls(tasks, MatcherConfig.load(config) if config is not None else None,
                   Leaderboards.load(leaderboards, tasks) if leaderboards is not None else None)

    def to_payload(self) -> dict[str, Any]:
        """The generation as plain JSON data: what a snapshot file holds, and what other processes are sent."""
        records = [profile.to_record() for profile in self.catalog.profiles()]
        return {"format": GENERATION_FORMAT, "version": GENERATION_VERSION, "fingerprint": self.fingerprint,
                "source": self.catalog.source, "catalog_fingerprint": self.catalog.fingerprint,
                "records": records, "config": None if self.config is None else self.config.to_dict(),
                "leaderboards": None if self.leaderboards is None else {
                    "source": self.leaderboards.source, **self.leaderboards.to_dict()}}

    def write(self, folder: Path) -> Path:
        """Write the snapshot file ``generation-<fingerprint>.json`` in `folder` (atomically, mode 0600)."""
        payload = self.to_payload()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"generation-{self.fingerprint[:24]}.json"
        _write_json(target, payload)
        return target

    @classmethod
    def read(cls, path: Path, *, fingerprint: str) -> Generation:
        """The generation in a snapshot written by `write`, which must be the one pinned by `fingerprint`.

        Raises `CatalogError` naming the snapshot when it is missing, unreadable, altered, or of
        another generation. Catalog warnings are not repeated: the parent reported them on `load`.
        """
        source = str(path)
        try:
            blob = read_cache_file(path, max_bytes=_MAX_SNAPSHOT_BYTES)
            if blob is None:
                raise FileNotFoundError("no such file")
            data = json.loads(blob.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{source}: cannot read the catalog generation: {exc}", source=source) from None
        return cls.from_payload(data, fingerprint=fingerprint, source=source)

    @classmethod
    def from_payload(cls, data: object, *, fingerprint: str, source: str) -> Generation:
        """The generation in `data` (from `to_payload`), which must be the one pinned by `fingerprint`.

        Raises `CatalogError` naming `source` when the data is of another generation or was altered.
        """
        if not isinstance(data, dict) or data.get("format") != GENERATION_FORMAT \
                or data.get("version") != GENERATION_VERSION:
            raise CatalogError(f"{source}: not a {GENERATION_FORMAT} version {GENERATION_VERSION} file",
                               source=source)
        if data.get("fingerprint") != fingerprint:
            raise CatalogError(f"{source}: holds catalog generation {str(data.get('fingerprint'))[:12]}, not the "
                               f"pinned generation {fingerprint[:12]}: every worker must serve the same one",
                               source=source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CatalogWarning)
            catalog = Catalog.from_records(_records(data, source), source=str(data.get("source", source)))
        config = None if data.get("config") is None else MatcherConfig.from_dict(data["config"], source=source)
        boards = data.get("leaderboards")
        if boards is not None and not isinstance(boards, dict):
            raise CatalogError(f"{source}: 'leaderboards' must be a boards file's content", source=source)
        leaderboards = None if boards is None else Leaderboards(boards.get("boards") or {},
                                                                source=str(boards.get("source", source)))
        generation = cls(catalog, config, leaderboards)
        if catalog.fingerprint != data.get("catalog_fingerprint") or generation.fingerprint != fingerprint:
            raise CatalogError(f"{source}: its content does not match its fingerprint {fingerprint[:12]}: the "
                               "snapshot was altered", source=source)
        return generation


def _records(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    records = data.get("records")
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise CatalogError(f"{source}: 'records' must be a list of task records", source=source)
    return records


class GenerationStore:
    """A folder of generation snapshots and the pointer to the one to serve now (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def publish(self, generation: Generation) -> Path:
        """Write `generation`'s snapshot and point at it; returns the snapshot. Older snapshots but
        the one it replaces are removed (a worker still reading that one finishes its read)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / _LOCK, "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            previous = self._pointer_or_none()
            snapshot = generation.write(self.folder)
            _write_json(self.folder / _POINTER, {"fingerprint": generation.fingerprint, "snapshot": snapshot.name})
            keep = {snapshot.name, *([previous[1].name] if previous is not None else [])}
            for old in self.folder.glob("generation-*.json"):
                if old.name not in keep:
                    old.unlink(missing_ok=True)
        return snapshot

    def pointer(self) -> tuple[str, Path]:
        """The fingerprint and snapshot path of the generation to serve now; `CatalogError` when unreadable."""
        found = self._pointer_or_none()
        if found is None:
            raise CatalogError(f"{self.folder / _POINTER}: no catalog generation has been published here",
                               source=str(self.folder))
        return found

    def current(self) -> Generation:
        """The generation to serve now, read from its snapshot and checked against the pointer's fingerprint."""
        fingerprint, snapshot = self.pointer()
        return Generation.read(snapshot, fingerprint=fingerprint)

    def _pointer_or_none(self) -> tuple[str, Path] | None:
        path = self.folder / _POINTER
        try:
            blob = read_cache_file(path, max_bytes=4096)
            if blob is None:
                return None
            data = json.loads(blob.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"{path}: cannot read the generation pointer: {exc}", source=str(path)) from None
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str) \
                or not isinstance(data.get("snapshot"), str) or "/" in data["snapshot"]:
            raise CatalogError(f"{path}: not a generation pointer", source=str(path))
        return data["fingerprint"], self.folder / data["snapshot"]


def _write_json(target: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `target` atomically (mode 0600)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, sort_keys=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report_failure(snapshot: Path, reason: str) -> None:
    """Leave a note beside `snapshot` that this process could not serve it (best effort)."""
    note = snapshot.with_name(f"{snapshot.name}.{os.getpid()}{_FAILURE_SUFFIX}")
    with contextlib.suppress(OSError):  # the worker's own log line still says why
        note.write_text(reason, encoding="utf-8")


def reported_failures(folder: Path) -> list[str]:
    """The notes left by `report_failure` in `folder`, oldest first."""
    try:
        notes = sorted(folder.glob(f"*{_FAILURE_SUFFIX}"), key=lambda path: path.stat().st_mtime)
        return [note.read_text(encoding="utf-8") for note in notes]
    except OSError:
        return []
