"""Local files for audit events the store could not take: the spill file and the poison file.

Both are append-only JSON lines under the data folder (the events hold no secret). An append is
one `write` then `fsync`, under an exclusive `flock` so that processes sharing the folder never
interleave; once `append` returns, the events are on disk. A failed write is cut back off, so a
later append never lands after half a line.

The spill file (`audit-spill.jsonl`) holds events to write to the store when it answers again: a
replay first moves the live file aside (appends then start a new one) and reads the moved files,
oldest first. The poison file (`audit-poison.jsonl`) holds events the store refused for one of
their values, with the error's type; those wait for an operator and are never replayed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from sluicegate.audit.files import fsync_dir, lock, same_file, try_lock, write_all

SPILL_NAME = "audit-spill.jsonl"
POISON_NAME = "audit-poison.jsonl"


class JsonLinesFile:
    """An append-only JSON-lines file, fsynced on every append; safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write `records`, one per line, and fsync; raises `OSError` when the disk refuses."""
        data = b"".join([orjson.dumps(record) + b"\n" for record in records])
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    lock(fd)
                    opened = os.fstat(fd)
                    if not same_file(opened, self.path):
                        continue  # moved aside for a replay while we waited: append to the new one
                    write_all(fd, data, opened.st_size)
                    os.fsync(fd)
                    if opened.st_size == 0:
                        fsync_dir(self.path.parent)  # a new file: its name must survive a crash too
                    return
                finally:
                    os.close(fd)

    def check(self) -> None:
        """Whether the file takes an append (opened for append and fsynced, nothing written);
        raises `OSError` when it does not."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                lock(fd)
                os.fsync(fd)
                if os.fstat(fd).st_size == 0 and same_file(os.fstat(fd), self.path):
                    self.path.unlink()  # leave no empty file behind
            finally:
                os.close(fd)


class SpillFile(JsonLinesFile):
    """Events waiting for the store; `set_aside` and `read` serve the replay."""

    def set_aside(self) -> list[Path]:
        """Move the live file aside and return every file waiting for a replay, oldest first."""
        with self._lock, contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                lock(fd)
                if same_file(os.fstat(fd), self.path):
                    aside = self.path.with_name(f"{self.path.stem}.{time.time_ns():020d}-{os.getpid()}.jsonl")
                    os.rename(self.path, aside)
                    fsync_dir(self.path.parent)
            finally:
                os.close(fd)
        return self.waiting()

    def waiting(self) -> list[Path]:
        """Files set aside and not yet replayed (by this process or an earlier one), oldest first."""
        return sorted(self.path.parent.glob(f"{self.path.stem}.*.jsonl"))

    def exists(self) -> bool:
        """Whether any event waits: a live file or one set aside."""
        return self.path.exists() or bool(self.waiting())

    def count(self) -> int:
        """Events waiting in every spill file (lines; reads the files)."""
        total = 0
        for path in [self.path, *self.waiting()]:
            with contextlib.suppress(OSError):
                total += path.read_bytes().count(b"\n")
        return total

    @staticmethod
    @contextlib.contextmanager
    def claim(path: Path) -> Iterator[bool]:
        """Hold a set-aside file for a replay; False when another process replays it."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield False
            return
        try:
            yield try_lock(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The events of a spill file, and its lines that are not one (a write cut by a crash)."""
        records: list[dict[str, Any]] = []
        broken: list[bytes] = []
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                broken.append(line)
        return records, broken

    @staticmethod
    def remove(path: Path) -> None:
        """Delete a replayed file."""
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
