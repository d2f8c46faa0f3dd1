"""Catalog generations: one validated catalog and config, pinned by fingerprint, served by every worker.

Several worker processes behind one port must give the same answer whichever of them a request
reaches. If each worker read the catalog and config files itself, an edit between two reads (a
worker restarted by the supervisor reads them again) would put two catalogs behind one port, and
a broken edit would make every replacement fail, in a loop. So the parent loads and validates
the files once into a `Generation`, writes it to a snapshot file (`write`) and hands the workers
the snapshot's path and the generation's fingerprint; each worker reads the snapshot (`read`),
which refuses any other fingerprint. A worker that cannot serve its generation leaves a note
(`report_failure`) for the parent to print (`reported_failures`) and stops, and the parent stops
the server instead of restarting it. Serving a new catalog later (a reload) means a new
generation, a new snapshot and a new fingerprint for the workers, by the same functions.
"""

from __future__ import annotations

import contextlib
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

__all__ = ["Generation", "report_failure", "reported_failures"]

GENERATION_FORMAT = "task-matcher-generation"
GENERATION_VERSION = 1
# A snapshot holds a whole catalog: at most a few catalog files' worth (16 MiB each).
_MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
_FAILURE_SUFFIX = ".failed"


@dataclass(frozen=True)
class Generation:
    """A validated catalog and the config to match it with (None: the matcher's own choice)."""

    catalog: Catalog
    config: MatcherConfig | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the catalog's fingerprint and the config's settings: equal generations share it."""
        config = None if self.config is None else self.config.to_dict()
        blob = json.dumps({"catalog": self.catalog.fingerprint, "config": config}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @classmethod
    def load(cls, catalog: Path | None = None, config: Path | None = None) -> Generation:
        """Read and validate a catalog (default: the bundled one) and a config file, once."""
        return cls(load_catalog(catalog) if catalog is not None else default_catalog(),
                   MatcherConfig.load(config) if config is not None else None)

    def to_payload(self) -> dict[str, Any]:
        """The generation as plain JSON data: what a snapshot file holds, and what other processes are sent."""
        records = [{**profile.to_dict(examples_n=None), "leaderboard": profile.leaderboard}
                   for profile in self.catalog.profiles()]
        return {"format": GENERATION_FORMAT, "version": GENERATION_VERSION, "fingerprint": self.fingerprint,
                "source": self.catalog.source, "catalog_fingerprint": self.catalog.fingerprint,
                "records": records, "config": None if self.config is None else self.config.to_dict()}

    def write(self, folder: Path) -> Path:
        """Write the snapshot file ``generation-<fingerprint>.json`` in `folder` (atomically, mode 0600)."""
        payload = self.to_payload()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"generation-{self.fingerprint[:24]}.json"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False, sort_keys=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
        generation = cls(catalog, config)
        if catalog.fingerprint != data.get("catalog_fingerprint") or generation.fingerprint != fingerprint:
            raise CatalogError(f"{source}: its content does not match its fingerprint {fingerprint[:12]}: the "
                               "snapshot was altered", source=source)
        return generation


def _records(data: dict[str, Any], source: str) -> list[dict[str, Any]]:
    records = data.get("records")
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise CatalogError(f"{source}: 'records' must be a list of task records", source=source)
    return records


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
