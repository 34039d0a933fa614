"""`file:///path`: a secret in a small local file, such as a mounted Kubernetes secret."""

from __future__ import annotations

from pathlib import Path

from sluicegate.vault import SecretUnavailable

#: a key file is tiny; a larger one is a misconfiguration, not something to load into memory
MAX_SECRET_FILE_BYTES = 64 * 1024


class FileBackend:
    """Reads `file:///path`; surrounding whitespace (a trailing newline) is dropped."""

    def read(self, ref: str) -> str:
        """The file's content; missing, unreadable, oversized or empty fails closed."""
        path = ref.removeprefix("file://")
        try:
            with Path(path).open("rb") as f:
                raw = f.read(MAX_SECRET_FILE_BYTES + 1)
            value = raw.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise SecretUnavailable(f"secret reference file://{path} cannot be read") from None
        if len(raw) > MAX_SECRET_FILE_BYTES:
            raise SecretUnavailable(f"secret reference file://{path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        if not value:
            raise SecretUnavailable(f"secret reference file://{path} is empty")
        return value
