"""Reading cache files defensively: regular files only, bounded in size, never blocking.

Caches live in a folder that other processes (or people) can write. A FIFO at a cache path would
block the reader for ever, a device or a symbolic link could stream or point anywhere, a file of
gigabytes would fill memory, and a folder the process may not enter raises `PermissionError`.
`read_cache_file` refuses all of these with an `UnusableCacheError` that says why, so each cache
warns and is rebuilt instead of hanging or crashing the process that reads it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["UnusableCacheError", "read_cache_file"]

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
