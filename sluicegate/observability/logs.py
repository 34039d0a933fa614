"""The gateway's own log lines: `text` for people or `json` for log pipelines, one line per record.

Every line logged while a call is handled names its request id (`REQUEST_ID`, set where the call
is made). Whatever a record holds, it cannot forge a line: control characters (CR, LF, ESC, the C1
range, Unicode line separators) are escaped in text, JSON escapes them in json, and a traceback's
lines are indented under the record they belong to. `LogSetup` installs the handler and the level
of each logger from `observability.logging`, again on each config reload.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sluicegate.observability.config import LoggingConfig

#: the request id of the call the current task handles (None outside a call)
REQUEST_ID: ContextVar[str | None] = ContextVar("sluicegate_request_id", default=None)

#: characters that could end a line or drive a terminal, escaped in text lines: C0 but TAB, DEL,
#: C1 (NEL U+0085 ends a line for `str.splitlines`, CSI U+009B starts a terminal sequence) and the
#: Unicode line and paragraph separators
_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
#: the same characters where JSON leaves them as they are (C1 and the separators, in UTF-8)
_JSON_RAW = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
#: what a continuation line (a traceback's) starts with, so no line of a record begins like a record
_INDENT = "    "
#: `LogRecord` attributes that are not a caller's `extra` fields
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "request_id"}


def neutralise(text: str) -> str:
    """`text` with its control characters and line separators escaped (`\\n`, `\\x1b` ...)."""
    return text if text.isprintable() else text.translate(_ESCAPES)


def _lines(text: str) -> str:
    """Multi-line text (a traceback) as continuation lines: each one escaped and indented."""
    return "\n".join(_INDENT + neutralise(line) for line in text.split("\n"))


def _request_id(record: logging.LogRecord) -> str | None:
    # Read when the record is formatted, in the task that logged it (handlers here are synchronous);
    # a record given `extra={"request_id": ...}` keeps its own.
    given = record.__dict__.get("request_id")
    return given if isinstance(given, str) else REQUEST_ID.get()


class TextFormatter(logging.Formatter):
    """`2026-01-02 10:00:00,123 WARNING sluicegate.limits [req_...]: message`, one line, and the
    traceback (if any) on indented lines below it."""

    def format(self, record: logging.LogRecord) -> str:
        message = neutralise(record.getMessage())
        request_id = _request_id(record)
        head = f"{self.formatTime(record)} {record.levelname} {neutralise(record.name)}"
        line = f"{head} [{neutralise(request_id)}]: {message}" if request_id else f"{head}: {message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + _lines(record.exc_text)
        if record.stack_info:
            line += "\n" + _lines(self.formatStack(record.stack_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `message`, `request_id` (during a call),
    `exc_info` and `stack_info` as strings, then the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id:
            out["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        return json_line(out)


def json_line(data: dict[str, Any]) -> str:
    """`data` as one line of JSON, line separators and C1 characters escaped too."""
    try:
        raw = orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # an integer past 64 bits, or a value whose repr fails
        raw = json.dumps(data, default=repr, ensure_ascii=False).encode()
    if not raw.isascii():
        # Valid JSON as they are, but a reader splitting on Unicode line ends, or a terminal, would act on them.
        raw = _JSON_RAW.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), raw)
    return raw.decode()


class LogSetup:
    """The process's log handler (on the root logger) and the level of each logger.

    Usage: `setup = LogSetup(); setup.apply(config.observability.logging)`, and again with the
    reloaded config; `level` and `format` (command-line flags) win over the config's."""

    def __init__(self, stream: IO[str] | None = None, *, level: str | None = None, format: str | None = None) -> None:
        self.handler = logging.StreamHandler(stream or sys.stderr)
        self.level = level
        self.format = format
        #: loggers given a level by the config, reset when a reload leaves them out
        self._named: set[str] = set()

    def apply(self, config: LoggingConfig) -> None:
        """Install the handler (replacing the root logger's others) with the config's format and levels."""
        kind = self.format or config.format
        self.handler.setFormatter(JsonFormatter() if kind == "json" else TextFormatter())
        root = logging.getLogger()
        for handler in list(root.handlers):
            if handler is not self.handler:
                root.removeHandler(handler)
                handler.close()
        if self.handler not in root.handlers:
            root.addHandler(self.handler)
        root.setLevel((self.level or config.level).upper())
        for name in self._named - set(config.levels):
            logging.getLogger(name).setLevel(logging.NOTSET)
        for name, level in config.levels.items():
            logging.getLogger(name).setLevel(level)
        self._named = set(config.levels)


def setup_logging(level: str | None = "INFO", format: str | None = "text") -> LogSetup:
    """Log to stderr in `format` at `level` (None: the config's, once applied; until then the
    defaults); the setup, to apply a config to."""
    from sluicegate.observability.config import LoggingConfig

    setup = LogSetup(level=level, format=format)
    setup.apply(LoggingConfig())
    return setup


__all__ = ["REQUEST_ID", "JsonFormatter", "LogSetup", "TextFormatter", "json_line", "neutralise", "setup_logging"]
