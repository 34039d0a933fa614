"""Bodies built from the official SDKs' own type definitions, with a unique marker in every string.

`bodies(tp)` walks a TypedDict (request params) or a pydantic model (answers, stream events) through
Union / Optional / Iterable / List / Dict / Literal / Required / NotRequired / Annotated and nested
types, and returns bodies that together hold every field of every union branch: each `str` field
holds a fresh marker, each dictionary-typed field a marker key with a marker value. `markers(body)`
finds them again with their paths. Tests use this to prove extraction covers what the SDKs can send.
"""

from __future__ import annotations

import collections.abc
import datetime
import itertools
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import pydantic

MARKER = re.compile(r"mk\d+qz")
_LIST_ORIGINS = {list, tuple, set, frozenset, collections.abc.Iterable, collections.abc.Sequence}
_MAP_ORIGINS = {dict, collections.abc.Mapping}
_counter = itertools.count(1)


def _marker() -> str:
    return f"mk{next(_counter)}qz"


def _strip(tp: Any) -> Any:
    """Unwrap Annotated, Required, NotRequired, ReadOnly; keep the discriminated type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Required, typing.NotRequired) or str(origin).endswith("ReadOnly"):
            tp = typing.get_args(tp)[0]
        else:
            return tp


def _alias(annotation: Any) -> str | None:
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            alias = getattr(extra, "alias", None)
            if isinstance(alias, str):
                return alias
    return None


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__annotations__") and hasattr(tp, "__total__")


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def samples(tp: Any, stack: tuple[Any, ...] = ()) -> list[Any]:
    """Values of type `tp`; together they take every branch of every union inside it."""
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return [_marker()]
    if tp is bool:
        return [True]
    if tp is int:
        return [7]
    if tp is float:
        return [0.5]
    if tp is type(None) or tp is None:
        return [None]
    if tp is object or tp is Any:
        return [_marker()]
    if tp is datetime.datetime:
        return ["2025-01-01T00:00:00Z"]
    if tp is bytes or origin is typing.IO or getattr(tp, "__name__", "") in ("PathLike", "IO"):
        return []  # file uploads: the SDK turns them into base64 strings, sampled as `str`
    if origin is typing.Literal:
        return [args[0]]
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in args:
            if arg is not type(None):
                out.extend(samples(arg, stack))
        return out
    if origin in _LIST_ORIGINS:
        item = args[0] if args else object
        return [samples(item, stack)]
    if origin in _MAP_ORIGINS:
        value_type = args[1] if len(args) == 2 else object
        return [{_marker(): v for v in samples(value_type, stack)}]
    if tp is dict:
        return [{_marker(): _marker()}]
    if tp is list:
        return [[_marker()]]
    if typing.get_origin(tp) is None and getattr(tp, "__name__", "") == "SequenceNotStr":
        return [[_marker()]]
    if _is_typeddict(tp) or _is_model(tp):
        if stack.count(tp) >= 1:
            return [{}]  # a recursive type: one level is enough
        fields = _fields(tp)
        per_field = {name: samples(ftp, (*stack, tp)) or [None] for name, ftp in fields.items()}
        n = max((len(v) for v in per_field.values()), default=1)
        return [{name: values[i % len(values)] for name, values in per_field.items()} for i in range(n)]
    origin_name = getattr(origin, "__name__", "") or getattr(tp, "__name__", "")
    if origin_name == "SequenceNotStr":
        return [samples(args[0] if args else str, stack)]
    raise TypeError(f"no sample for type {tp!r}")


def _fields(tp: Any) -> dict[str, Any]:
    """Wire name -> type of a TypedDict's or a model's fields."""
    out: dict[str, Any] = {}
    if _is_model(tp):
        for name, field in tp.model_fields.items():
            out[field.alias or name] = field.annotation
        return out
    hints = typing.get_type_hints(tp, include_extras=True)
    for name, annotation in hints.items():
        out[_alias(_strip_required(annotation)) or name] = annotation
    return out


def _strip_required(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Required, typing.NotRequired):
        return typing.get_args(tp)[0]
    return tp


def bodies(tp: Any) -> list[dict[str, Any]]:
    """Bodies of a TypedDict or model type that together hold every field of every branch."""
    out = samples(tp)
    assert all(isinstance(body, dict) for body in out)
    return out


def markers(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[str, tuple[Any, ...], bool]]:
    """(marker, path, is_key) of every marker in a body; a key's path ends at the key."""
    if isinstance(value, str):
        for m in MARKER.findall(value):
            yield m, path, False
    elif isinstance(value, dict):
        for key, item in value.items():
            for m in MARKER.findall(key):
                yield m, (*path, key), True
            yield from markers(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from markers(item, (*path, i))


def shape(path: tuple[Any, ...]) -> str:
    """A path with list positions and marker keys generalised: 'messages.*.content.*.text'."""
    parts = []
    for part in path:
        if isinstance(part, int) or MARKER.fullmatch(str(part)):
            parts.append("*")
        else:
            parts.append(str(part))
    return ".".join(parts)
