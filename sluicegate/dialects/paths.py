"""Paths to the texts of a request or answer body, and rewriting what they point at.

A path is a tuple of keys and list positions from the body's root, plus four markers:
`Key(name)` as the last step points at a dictionary key itself (redacting it renames the key);
`JSON` steps into the decoded value of a string that holds JSON text (tool-call arguments);
`TokenIds(encoding)` as the last step reads a list of token ids as the text they decode to;
`USER` marks where user-defined JSON begins (its keys are not shown in audit records).
A path may end at a number: redacting it puts the placeholder string in its place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import orjson

from sluicegate import tokens


class Key:
    """Last path step: the key `name` of the dictionary the path leads to (not its value)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return type(other) is Key and other.name == self.name

    def __hash__(self) -> int:
        return hash((Key, self.name))

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


class TokenIds(NamedTuple):
    """Last path step: the list of token ids the path leads to, as text in `encoding`."""

    encoding: str


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: path step: the string here is JSON text; the steps after it go into its decoded value
JSON: Final = _Marker("JSON")
#: path step: user-defined JSON (a tool schema or input) starts here; navigation ignores it
USER: Final = _Marker("USER")

Step = str | int | Key | TokenIds | _Marker
Path = tuple[Step, ...]


class PathError(ValueError):
    """A path does not lead anywhere in the body (or the JSON text on the way does not parse)."""


_FIELD = re.compile(r"[a-z][a-z0-9_]{0,39}")


def format_path(path: Path) -> str:
    """('messages', 2, 'content') -> 'messages[2].content', for audit records and errors.

    Names inside user-defined JSON, and names that do not look like API fields, show as `*`:
    they are the client's own text (a guard may have matched them), which audit records never
    hold. A key itself shows as `{key}`, decoded JSON text as `{json}`, token ids as `{tokens}`.
    """
    out = ""
    user = False
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
            continue
        if step is USER:
            user = True
            continue
        if step is JSON:
            out += "{json}"
            user = True
            continue
        if isinstance(step, Key):
            out += "{key}"
            continue
        if isinstance(step, TokenIds):
            out += "{tokens}"
            continue
        assert isinstance(step, str)
        name = step if not user and _FIELD.fullmatch(step) else "*"
        out += f".{name}" if out else name
    return out


def _steps(path: Path) -> list[Step]:
    return [step for step in path if step is not USER]


def set_path(obj: Any, path: Path, value: str) -> None:
    """Replace what `path` points at inside `obj` with `value`, in place (see `replace_paths`)."""
    replace_paths(obj, [(path, value)], copy=False)


def replace_paths(obj: Any, items: Iterable[tuple[Path, str]], *, copy: bool) -> Any:
    """`obj` with the text at each path replaced; the result (the same object unless `copy`).

    With `copy`, containers on the way to a replacement are copied and `obj` is left as it was
    (what is not on the way is shared). A key is renamed where it stands (order kept); JSON
    text is decoded, changed and written back compactly; token ids are encoded again from the
    new text. Replacements inside a string's JSON apply after one of the string itself.
    Raises `PathError` when a path does not fit the body.
    """
    tree: dict[Any, Any] = {}
    for path, value in items:
        node = tree
        for step in _steps(path):
            node = node.setdefault(step, {})
        node[_SET] = value
    if not tree:
        return obj
    return _apply(obj, tree, copy)


_SET: Final = _Marker("SET")


def _json_text(value: Any, original: Any, tree: dict[Any, Any]) -> str:
    """JSON text with replacements inside its decoded value, written again compactly. When a
    replacement of the text as written broke its JSON (a match that ran into an escape), the
    decoded replacements are applied to the original text instead: they hold what it matched."""
    for text in (value, original) if value is not original else (value,):
        if not isinstance(text, str):
            raise PathError("JSON text expected")
        try:
            decoded = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        return orjson.dumps(_apply(decoded, tree, False)).decode()
    raise PathError("the JSON text does not parse")


def _apply(value: Any, tree: dict[Any, Any], copy: bool) -> Any:
    original = value
    if _SET in tree:
        text = tree[_SET]
        # A number is read as its text: written back unchanged, it stays a number.
        if not (isinstance(value, int | float) and not isinstance(value, bool) and repr(value) == text):
            value = text
    json_tree = tree.get(JSON)
    if json_tree is not None:
        value = _json_text(value, original, json_tree)
    renames: dict[str, str] = {}
    children: list[tuple[Any, dict[Any, Any]]] = []
    for step, sub in tree.items():
        if step is _SET or step is JSON:
            continue
        if isinstance(step, TokenIds):
            text = sub.get(_SET)
            if not isinstance(text, str):
                raise PathError("token ids are replaced by text")
            value = tokens.encode_ids(text, step.encoding)
        elif isinstance(step, Key):
            text = sub.get(_SET)
            if isinstance(text, str):
                renames[step.name] = text
        else:
            children.append((step, sub))
    if not children and not renames:
        return value
    if isinstance(value, dict):
        target = dict(value) if copy else value
        for step, sub in children:
            if step not in target:
                raise PathError(f"no key {step!r}")
            target[step] = _apply(target[step], sub, copy)
        if renames:
            items = [(renames.get(k, k), v) for k, v in target.items()]
            target.clear()
            target.update(items)
        return target
    if isinstance(value, list):
        target_list = list(value) if copy else value
        for step, sub in children:
            if not isinstance(step, int) or not -len(target_list) <= step < len(target_list):
                raise PathError(f"no position {step!r}")
            target_list[step] = _apply(target_list[step], sub, copy)
        return target_list
    raise PathError("a path goes on past a string or number")
