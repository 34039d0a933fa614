"""Writing rows out as JSON Lines or CSV, one at a time: `sluicegate audit export` and `sluicegate report --csv`.

A CSV cell that a spreadsheet would read as a formula (one starting with `=`, `+`, `-`, `@`, a
tab or a carriage return) is prefixed with a single quote, as OWASP advises for CSV injection:
consumer names, models and reasons can come from clients. Numbers are written as they are.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

import orjson

#: what `sluicegate audit export --format` writes
FORMATS = ("jsonl", "csv")
#: the first characters that make a spreadsheet evaluate a cell
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: NULL empty, booleans `true`/`false`, numbers as they are, text neutralised."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    text = _plain(value) if isinstance(value, bytes | Decimal) else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def write_csv(rows: Iterable[Mapping[str, Any]], out: IO[str], header: Sequence[str]) -> int:
    """Write a header row, then each row's values in the header's order; return the rows written."""
    writer = csv.writer(out)
    writer.writerow([csv_cell(name) for name in header])
    count = 0
    for row in rows:
        writer.writerow([csv_cell(row.get(name)) for name in header])
        count += 1
    return count


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: IO[bytes]) -> int:
    """Write one JSON object per line; return the rows written."""
    count = 0
    for row in rows:
        out.write(orjson.dumps(row, default=_plain, option=orjson.OPT_APPEND_NEWLINE))
        count += 1
    return count


def _plain(value: Any) -> str:
    """Bytes (a hash, an HMAC) as hex; an exact decimal as its text."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__}")
