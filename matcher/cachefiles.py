"""Reading cache files defensively: regular files only, bounded in size, never blocking.

Caches live in a folder that other processes (or people) can write. A FIFO at a cache path would
block the reader for ever, a device or a symbolic link could stream or point anywhere, a file of
gigabytes would fill memory, and a folder the process may not enter raises `PermissionError`.
`read_cache_file` refuses all of these with an `UnusableCacheError` that says why, so each cache
warns and is rebuilt instead of hanging or crashing the process that reads it. `save_arrays` and
`load_arrays` are the one numpy cache format (the task embeddings, the keyword index): named arrays,
a JSON manifest that must match exactly and a checksum, written atomically.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["TEMP_SUFFIX", "UnusableCacheError", "load_arrays", "read_cache_file", "save_arrays", "sync_folder",
           "write_atomically"]

# Temporaries are `.<name>.<random>.tmp` beside their file (see `write_atomically`).
TEMP_SUFFIX = ".tmp"

# Opened without following a final symbolic link, and without blocking on a FIFO swapped in
# after the check (reading a regular file ignores O_NONBLOCK).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR})


class UnusableCacheError(OSError):
    """A cache file exists but must not be read: not a regular file, too large, or not readable."""


def read_cache_file(path: Path, *, max_bytes: int) -> bytes | None:
    """The bytes of the regular file at `path`, or None when nothing is there.

    Raises `UnusableCacheError` naming the reason when something is there but cannot be used:
    a FIFO, socket, device, folder or symbolic link (checked with `lstat` before opening, and
    again on the open descriptor), a file over `max_bytes`, or one the process may not read.
    """
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise UnusableCacheError(f"cannot inspect it: {exc.strerror or exc}") from None
    _check_regular(info)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None  # removed since the check: as good as never there
        raise UnusableCacheError(f"cannot open it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _check_regular(info)
        if info.st_size > max_bytes:
            raise UnusableCacheError(f"it holds {info.st_size:,} bytes, more than the {max_bytes:,} expected")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise UnusableCacheError(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise UnusableCacheError(f"it grew past the {max_bytes:,} bytes expected while being read")
    return data


def _check_regular(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnusableCacheError(f"it is not a regular file but {_kind(info.st_mode)}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def write_atomically(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to a temporary beside `path` and rename it into place (readers never see half a file).

    `durable` also syncs the file and its folder to disk, so the new content survives a power loss.
    """
    _replace_atomically(path, lambda handle: handle.write(data), durable=durable)


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Sync a folder's entries (renames, new files) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _checksum(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """SHA-256 of the arrays' bytes, in name order (of one array alone: its bytes' digest)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def save_arrays(path: Path, manifest: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]], *,
                compressed: bool = False) -> None:
    """Write `arrays` with `manifest` and their checksum as one `.npz` file (deflated when
    `compressed`), atomically."""
    content: dict[str, Any] = {**arrays, "manifest": np.asarray(json.dumps(manifest, sort_keys=True)),
                               "checksum": np.asarray(_checksum(arrays))}
    save = np.savez_compressed if compressed else np.savez
    _replace_atomically(path, lambda handle: save(handle, **content))  # streamed: no copy in memory


def load_arrays(path: Path, manifest: Mapping[str, Any], names: tuple[str, ...], *,
                max_bytes: int) -> dict[str, npt.NDArray[Any]] | None:
    """The arrays `names` of the cache at `path`, or None when nothing is there.

    Raises `UnusableCacheError` (see `read_cache_file`) or `ValueError` when the file is there
    but unusable: not an `.npz` of these arrays, a manifest other than `manifest`, or a checksum
    mismatch. The checksum only proves the file whole: callers still check what the arrays say.
    """
    blob = read_cache_file(path, max_bytes=max_bytes)
    if blob is None:
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        stored = json.loads(str(data["manifest"]))
        if stored != manifest:
            raise ValueError("manifest does not match this model, catalog and settings")
        missing = sorted(set(names) - set(data.files))
        if missing:
            raise ValueError(f"arrays {', '.join(missing)} are missing")
        arrays = {name: np.asarray(data[name]) for name in names}
        checksum = str(data["checksum"])
    if _checksum(arrays) != checksum:
        raise ValueError("checksum mismatch")
    return arrays
