"""Audit rows bounded to what the store's columns hold, so that no value can stop the writer.

The bounds come from the `audit_events` table itself, once: an INTEGER column takes integers of
32 bits and a BIGINT column of 64 bits (as PostgreSQL has them; SQLite refuses past 64), a float
column finite numbers, a string column text without NUL or lone surrogates, cut to the column's
length (TEXT to `MAX_TEXT_CHARS`). A number out of range is clamped; a value of the wrong type
becomes NULL, or the column's zero where NULL is not allowed. Good values pass untouched.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sluicegate.audit.events import FIELDS, AuditEvent
from sluicegate.store.db import audit_events

#: the longest text kept in a TEXT column (`reason`, `guards`)
MAX_TEXT_CHARS = 32 * 1024
INT32 = 2**31 - 1
INT64 = 2**63 - 1

Row = tuple[Any, ...]
_Bound = Callable[[Any], Any]


def _integer(limit: int, default: int | None) -> _Bound:
    def bound(value: Any) -> Any:
        if type(value) is int and -limit - 1 <= value <= limit:
            return value
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and math.isfinite(value):
            value = int(value)
        if isinstance(value, int):
            return max(-limit - 1, min(limit, value))
        return default

    return bound


def _float(default: float | None) -> _Bound:
    def bound(value: Any) -> Any:
        if type(value) is float and math.isfinite(value):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(max(-INT64, min(INT64, value)))
        if isinstance(value, float) and math.isfinite(value):
            return float(value)
        return default

    return bound


def _boolean(default: bool | None) -> _Bound:
    def bound(value: Any) -> Any:
        if value is True or value is False:
            return value
        return default if value is None else bool(value)

    return bound


def _string(length: int, default: str | None) -> _Bound:
    def bound(value: Any) -> Any:
        if type(value) is str and len(value) <= length and value.isascii() and "\0" not in value:
            return value
        if not isinstance(value, str):
            return default
        # Lone surrogates cannot be encoded (SQLite, PostgreSQL), nor NUL stored (PostgreSQL).
        text = value.encode("utf-8", "replace").decode("utf-8").replace("\0", "")
        return text[:length]

    return bound


def _bound_of(column: sa.Column[Any]) -> _Bound:
    kind = column.type
    nullable = bool(column.nullable)
    if isinstance(kind, sa.Boolean):
        return _boolean(None if nullable else False)
    if isinstance(kind, sa.BigInteger):
        return _integer(INT64, None if nullable else 0)
    if isinstance(kind, sa.Integer):
        return _integer(INT32, None if nullable else 0)
    if isinstance(kind, sa.Float):
        return _float(None if nullable else 0.0)
    if isinstance(kind, sa.String):
        return _string(kind.length or MAX_TEXT_CHARS, None if nullable else "")
    raise TypeError(f"audit column {column.name} has a type the writer cannot bound: {kind!r}")


_COLUMNS = [audit_events.c[name] for name in FIELDS]
_BOUNDS: tuple[_Bound, ...] = tuple(_bound_of(column) for column in _COLUMNS)
#: where `request_id` sits in a row (replays skip the ids the store holds already)
REQUEST_ID = FIELDS.index("request_id")


def _check_of(index: int, column: sa.Column[Any]) -> str:
    """Python source of a test that row value `index` fits `column` as it is."""
    kind = column.type
    v = f"v{index}"
    if isinstance(kind, sa.Boolean):
        test = f"type({v}) is bool"
    elif isinstance(kind, sa.Integer):
        limit = INT64 if isinstance(kind, sa.BigInteger) else INT32
        test = f"type({v}) is int and {-limit - 1} <= {v} <= {limit}"
    elif isinstance(kind, sa.Float):
        test = f"type({v}) is float and isfinite({v})"
    else:
        # NUL and lone surrogates are checked on the row's text at once (`_clean_text`).
        test = f"type({v}) is str and len({v}) <= {kind.length or MAX_TEXT_CHARS}"  # type: ignore[attr-defined]
    return f"({v} is None or {test})" if column.nullable else f"({test})"


def _compile_fits() -> Callable[[Row], bool]:
    """`fits(row)`: whether every value of a row fits its column as it is, the writer's common
    case. Compiled from the table once (as `dataclasses` builds its methods), so that the check is
    one expression rather than a call per value."""
    # The row is unpacked into locals (v0, v1, ...): reading a local is cheaper than indexing.
    names = ", ".join(f"v{i}" for i in range(len(_COLUMNS)))
    strings = ", ".join(f"v{i}" for i, c in enumerate(_COLUMNS) if isinstance(c.type, sa.String))
    checks = " and ".join(_check_of(i, c) for i, c in enumerate(_COLUMNS))
    source = (
        "def fits(r):\n"
        f"    if len(r) != {len(_COLUMNS)}:\n"
        "        return False\n"
        f"    {names} = r\n"
        f"    return {checks} and clean_text(({strings},))\n"
    )
    namespace: dict[str, Any] = {"isfinite": math.isfinite, "clean_text": _clean_text}
    # The source is built from the table's column types and lengths only, never from a value.
    exec(source, namespace)
    fits: Callable[[Row], bool] = namespace["fits"]
    return fits


def _clean_text(strings: tuple[str | None, ...]) -> bool:
    """Whether a row's texts hold no NUL and no lone surrogate."""
    text = "".join(filter(None, strings))
    if "\0" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_fits = _compile_fits()


def bound_values(values: tuple[Any, ...] | list[Any]) -> Row:
    """A row whose every value fits its column, in `FIELDS` order."""
    row = tuple(values)
    if _fits(row):
        return row
    return tuple([bound(value) for bound, value in zip(_BOUNDS, row, strict=True)])


_values_of: Callable[[AuditEvent], tuple[Any, ...]] = operator.attrgetter(*FIELDS)


def row_of(event: AuditEvent) -> Row:
    """The bounded row of an event."""
    return bound_values(_values_of(event))


def row_from_dict(data: dict[str, Any]) -> Row:
    """The bounded row of an event read back as a dict (a spill file line); missing fields are NULL."""
    return bound_values([data.get(name) for name in FIELDS])


def row_as_dict(row: Row) -> dict[str, Any]:
    """A row as a dict by field name (what spill files hold)."""
    return dict(zip(FIELDS, row, strict=True))
