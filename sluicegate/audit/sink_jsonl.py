"""The `jsonl` audit sink: one JSON object per line in a local file, rotated by size.

Rotation follows `logging.handlers.RotatingFileHandler`'s scheme: before a write would take the
file past `max_bytes`, `path.<n>` becomes `path.<n+1>` (the last backup is overwritten), `path`
becomes `path.1`, and writing goes on in a new `path`. Lines are never split between files, so
every event is in exactly one file; a file is larger than `max_bytes` only when a single line is.

A batch is one `write` of whole lines (mode 0600, append-only), under an exclusive `flock` on the
file, so processes sharing it never interleave or rotate twice. A crash mid-write leaves at most
one cut line: the next write first ends it with a newline, so the lines after it stay whole.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sluicegate.audit.files import fsync_dir, lock, same_file, unlock, write_all
from sluicegate.audit.sink_base import Record, Sink, SinkContext, backoff_s, dump_json

if TYPE_CHECKING:
    from sluicegate.audit.sink_config import JsonlSinkConfig


#: lines written per batch at most
BATCH_LINES = 1000
#: a failing write (a full disk, a permission) is tried again after at most this long
MAX_RETRY_S = 30.0


class JsonlSink(Sink):
    """Appends events to a JSON-lines file; a write that fails is retried until it succeeds (the
    queue bounds what waits meanwhile) or until the sink's stop deadline."""

    type = "jsonl"
    config: JsonlSinkConfig

    def __init__(self, config: JsonlSinkConfig, name: str, context: SinkContext) -> None:
        super().__init__(config, name, context)
        self.batch_size = BATCH_LINES
        path = Path(config.path).expanduser()
        self.path = path if path.is_absolute() else context.data_dir / path
        self._fd: int | None = None

    @property
    def target(self) -> str:
        return str(self.path)

    def deliver(self, batch: list[Record]) -> None:
        lines = [dump_json(record) + b"\n" for record in batch]
        attempt = 0
        while True:
            try:
                self.append(lines)
            except OSError as exc:
                self._close_fd()
                self.counted(len(batch) - len(lines))
                batch = batch[len(batch) - len(lines) :]
                attempt += 1
                self.failed(f"{type(exc).__name__}: {exc.strerror or exc}")
                if not self.pause(backoff_s(attempt, 0.5, MAX_RETRY_S)):
                    self.given_up(len(batch), "stopped while the file could not be written")
                    return
            else:
                self.counted(len(batch))
                return

    def shut(self) -> None:
        self._close_fd()

    def append(self, lines: list[bytes]) -> None:
        """Write whole lines, rotating as `max_bytes` requires, removing each from `lines` once it
        is written; raises `OSError` when the disk refuses (`lines` then holds what is left)."""
        max_bytes = self.config.max_bytes
        while lines:
            fd = self._open()
            lock(fd)
            try:
                if not same_file(os.fstat(fd), self.path):
                    self._close_fd()  # another process rotated it meanwhile: write to the new file
                    continue
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    write_all(fd, b"\n", size)  # end a line cut by a crash, alone on its line
                    size += 1
                # The lines that fit; one alone when the file is empty, whatever its length.
                end, length = 0, 0
                while end < len(lines) and (
                    not max_bytes or size + length + len(lines[end]) <= max_bytes or (size == 0 and end == 0)
                ):
                    length += len(lines[end])
                    end += 1
                if end:
                    write_all(fd, b"".join(lines[:end]), size)
                    if self.config.fsync:
                        os.fsync(fd)
                    del lines[:end]
                if lines:
                    self._rotate()
            finally:
                if self._fd is not None:
                    unlock(self._fd)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o777 != 0o600:
                    os.fchmod(fd, 0o600)  # made before with a wider mode: events are not for every reader
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _rotate(self) -> None:
        """`path.<n>` -> `path.<n+1>` ... `path` -> `path.1` (called holding the file's lock)."""
        backups = self.config.backups
        for n in range(backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        fsync_dir(self.path.parent)
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
