"""File primitives the audit's local files share (the spill file, the JSONL sink): whole appends,
advisory locks between processes, and a folder's entries made durable."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock between processes
    fcntl = None  # type: ignore[assignment]


def write_all(fd: int, data: bytes, size: int) -> None:
    """Write `data` whole at the end of `fd`, or cut the file back to `size` (no half line is left
    for the next append to follow)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


def same_file(opened: os.stat_result, path: Path) -> bool:
    """Whether `path` still names the open file whose `fstat` is `opened` (not renamed or replaced)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev)


def lock(fd: int) -> None:
    """Take the file's exclusive lock (between processes), waiting for it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def try_lock(fd: int) -> bool:
    """Take the file's exclusive lock if it is free."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new, renamed or removed file) durable; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
