"""What guards read in a body: everything, except a reviewed list of fields that are not text.

A dialect describes each body shape with a `Fields`: which fields are skipped (each with the
reason, in path patterns), which strings hold JSON text, where token ids may stand for text.
`Fields.texts(body)` then walks the whole body once and returns every text a model reads:
strings, numbers (as text, so number-shaped rules see a card number sent as a JSON number) and,
inside user-defined JSON (a tool's schema, a tool call's input, anything not described), every
key too (but JSON Schema's keywords, which are only themselves). A field nobody listed is read:
a new API field is covered the day it appears.

Patterns are dot-separated steps from the root: a name, or `*` for any list position or key; a
step may add a condition on the object it reaches, `*(type=image|document)`, which then holds
only for objects whose `type` is one of those values. Patterns are compiled once, on first use
(the readings of every dialect take a few MiB; a gateway without guards reads no body's texts):
`compile_all` compiles them when a config with guards loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from sluicegate import tokens
from sluicegate.dialects.paths import JSON, USER, Key, Path, TokenIds, format_path
from sluicegate.errors import BadRequest

#: most token ids decoded per body (a million tokens is beyond every model's context)
MAX_TOKEN_IDS = 1_000_000
#: every body shape described, to compile together (`compile_all`)
_SHAPES: list[Fields] = []

#: JSON Schema's own keywords: as keys they are these words and nothing else, so reading them
#: finds nothing; what they hold, and every other key (a property's name), is read
SCHEMA_KEYWORDS = frozenset(
    {"type", "description", "properties", "items", "required", "enum", "default", "title", "format",
     "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
     "minItems", "maxItems", "uniqueItems", "additionalProperties", "anyOf", "oneOf", "allOf", "not", "$ref",
     "$defs", "definitions", "$schema", "$id", "const", "examples", "nullable", "multipleOf", "prefixItems",
     "patternProperties", "propertyNames", "minProperties", "maxProperties", "strict"}
)  # fmt: skip

_STEP = re.compile(r"([^.()]+)(?:\(([A-Za-z_]+)=([^)]*)\))?")


class _Pattern:
    """One position in the trie of patterns, as written: a name's, a `*`'s, or a condition's."""

    __slots__ = ("children", "json_text", "skip", "star", "token_ids", "variants")

    def __init__(self) -> None:
        self.children: dict[str, _Pattern] = {}
        self.star: _Pattern | None = None
        self.skip: str | None = None
        self.json_text = False
        self.token_ids = False
        #: field -> value -> what applies to objects whose `field` has that value
        self.variants: dict[str, dict[str, _Pattern]] = {}


class _Node:
    """One position in a body shape: what happens to the value found there. A node stands for
    every pattern position that applies at once (a name and a `*`, a condition and the rules
    without it), so a walk does one dict lookup per step."""

    __slots__ = ("children", "json_text", "skip", "star", "token_ids", "variants")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        #: why the value here is not read (None: it is)
        self.skip: str | None = None
        self.json_text = False
        self.token_ids = False
        #: field -> value -> the node for objects whose `field` has that value
        self.variants: dict[str, dict[str, _Node]] = {}


def _compile(root: _Pattern) -> _Node:
    """The nodes of a pattern trie: each node is a set of pattern positions, built once per
    distinct set (so nested and repeated patterns cost what they add, not their product)."""
    built: dict[tuple[frozenset[_Pattern], bool], _Node] = {}

    def build(patterns: frozenset[_Pattern], conditioned: bool) -> _Node:
        key = (patterns, conditioned)
        node = built.get(key)
        if node is not None:
            return node
        node = built[key] = _Node()
        node.skip = next((p.skip for p in patterns if p.skip is not None), None)
        node.json_text = any(p.json_text for p in patterns)
        node.token_ids = any(p.token_ids for p in patterns)
        stars = frozenset(p.star for p in patterns if p.star is not None)
        if stars:
            node.star = build(stars, False)
        for name in {name for p in patterns for name in p.children}:
            named = frozenset(p.children[name] for p in patterns if name in p.children)
            node.children[name] = build(named | stars, False)
        if not conditioned:
            extra: dict[tuple[str, str], set[_Pattern]] = {}
            for p in patterns:
                for field, by_value in p.variants.items():
                    for value, variant in by_value.items():
                        extra.setdefault((field, value), set()).add(variant)
            for (field, value), variants in extra.items():
                node.variants.setdefault(field, {})[value] = build(patterns | variants, True)
        return node

    return build(frozenset({root}), False)


class Fields:
    """The reading of one body shape: skipped fields (with why), JSON-text and token-id fields.

    `skip` maps a pattern to the reason its value is not model text; `json_text` lists strings
    that hold JSON (read as written, and decoded); `token_ids` lists fields whose value may be a
    list of token ids (or a list of such lists) standing for text; `envelopes` lists objects whose
    keys are API field names (every object on the way to a listed pattern is one too): elsewhere,
    keys are text the model reads.
    """

    def __init__(
        self,
        skip: Mapping[str, str],
        *,
        json_text: Iterable[str] = (),
        token_ids: Iterable[str] = (),
        envelopes: Iterable[str] = (),
    ) -> None:
        self.skip = dict(skip)
        self.json_text = tuple(json_text)
        self.token_ids = tuple(token_ids)
        self.envelopes = tuple(envelopes)
        self._root: _Node | None = None
        _SHAPES.append(self)

    @property
    def root(self) -> _Node:
        """The compiled patterns, built on first use (a few milliseconds)."""
        root = self._root
        if root is None:
            root = self._root = self._compile()
        return root

    def _compile(self) -> _Node:
        root = _Pattern()
        for pattern, reason in self.skip.items():
            for node in _add(root, pattern):
                node.skip = reason
        for pattern in self.json_text:
            for node in _add(root, pattern):
                node.json_text = True
        for pattern in self.token_ids:
            for node in _add(root, pattern):
                node.token_ids = True
        for pattern in self.envelopes:
            _add(root, pattern)
        return _compile(root)

    def texts(
        self, body: Any, *, model: str | None = None, skipped: list[tuple[Path, str]] | None = None
    ) -> list[tuple[Path, str]]:
        """Every text of `body` a model reads, with its path, in document order.

        `model` picks the encoding of token ids; `skipped`, when given, receives the path and
        reason of every value left out (for tests and documentation). Raises `BadRequest` when
        token ids do not decode."""
        walk = _Walk(skipped, model)
        walk.at(body, self.root, ())
        return walk.out

    def holds_token_ids(self, body: Any) -> bool:
        """Whether reading `body` decodes token ids, and so needs an encoding (`texts` loads it
        on first use): a top-level token-id field holds a list of ints or of lists. A deeper
        token-id pattern is not looked up: it answers True."""
        if not self.token_ids or not isinstance(body, dict):
            return False
        for pattern in self.token_ids:
            if not pattern.isidentifier():
                return True
            value = body.get(pattern)
            first = value[0] if isinstance(value, list) and value else None
            if isinstance(first, int | list) and not isinstance(first, bool):
                return True
        return False


def compile_all() -> None:
    """Compile every body shape described now, rather than on the first call that reads one."""
    for shape in _SHAPES:
        shape.root  # noqa: B018  (compiles it)


def _add(root: _Pattern, pattern: str) -> list[_Pattern]:
    """The nodes a pattern names, created as needed (one per value of a condition)."""
    nodes = [root]
    for raw in pattern.split("."):
        match = _STEP.fullmatch(raw)
        if match is None:
            raise ValueError(f"bad field pattern step {raw!r} in {pattern!r}")
        name, field, values = match.groups()
        reached = []
        for node in nodes:
            if name == "*":
                if node.star is None:
                    node.star = _Pattern()
                reached.append(node.star)
            else:
                reached.append(node.children.setdefault(name, _Pattern()))
        if field is not None:
            nodes = [
                node.variants.setdefault(field, {}).setdefault(value, _Pattern())
                for node in reached
                for value in values.split("|")
            ]
        else:
            nodes = reached
    return nodes


class _Walk:
    """One walk over a body: the texts found, and (optionally) what was left out and why.

    The described part of a body (its envelope) is walked by recursion, as deep as the patterns
    go; user-defined JSON below it with a stack of its own, however deep it nests."""

    __slots__ = ("budget", "model", "out", "skipped")

    def __init__(self, skipped: list[tuple[Path, str]] | None, model: str | None) -> None:
        self.out: list[tuple[Path, str]] = []
        self.skipped = skipped
        self.model = model
        self.budget = MAX_TOKEN_IDS

    def at(self, value: Any, node: _Node, path: Path) -> None:
        """A value at a described position."""
        if node.variants and isinstance(value, dict):
            node = _pick(node, value)
        if node.skip is not None:
            if self.skipped is not None:
                self.skipped.append((path, node.skip))
            return
        if isinstance(value, str):
            if value:
                self.out.append((path, value))
                if node.json_text:
                    self.json_text(value, path)
        elif isinstance(value, dict):
            self.fields(value, node, path)
        elif isinstance(value, list):
            if node.token_ids and value and self.token_ids(value, path):
                return
            star = node.star
            for i, item in enumerate(value):
                if star is not None:
                    self.at(item, star, (*path, i))
                else:
                    self.user(item, (*path, i, USER) if isinstance(item, dict | list) else (*path, i))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self.out.append((path, repr(value)))

    def fields(self, value: dict[str, Any], node: _Node, path: Path) -> None:
        """An object at a described position: its keys are API field names, not text."""
        out = self.out
        children, star = node.children, node.star
        for key, item in value.items():
            if item is None or item is True or item is False:
                continue
            child = children.get(key, star)
            if child is None:
                if isinstance(item, str):
                    if item:
                        out.append(((*path, key), item))
                elif isinstance(item, dict | list):
                    self.user(item, (*path, key, USER))
                elif isinstance(item, int | float):
                    out.append(((*path, key), repr(item)))
            elif child.variants:
                self.at(item, child, (*path, key))
            elif child.skip is not None:
                if self.skipped is not None:
                    self.skipped.append(((*path, key), child.skip))
            elif isinstance(item, dict):
                self.fields(item, child, (*path, key))  # the common case, without a detour by `at`
            else:
                self.at(item, child, (*path, key))

    def user(self, value: Any, path: Path) -> None:
        """User-defined JSON (or an undescribed value): every string, every key, every number."""
        out = self.out
        stack: list[tuple[Any, Path]] = [(value, path)]
        pop, push = stack.pop, stack.append
        while stack:
            value, path = pop()
            if isinstance(value, str):
                if value:
                    out.append((path, value))
            elif isinstance(value, dict):
                for key, item in reversed(value.items()):
                    push((item, (*path, key)))
                    if key and key not in SCHEMA_KEYWORDS:
                        push((key, (*path, Key(key))))
            elif isinstance(value, list):
                for i in range(len(value) - 1, -1, -1):
                    push((value[i], (*path, i)))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out.append((path, repr(value)))

    def json_text(self, text: str, path: Path) -> None:
        """The decoded JSON of a string that holds JSON: escapes (`\\u0070`) hide nothing."""
        stripped = text.lstrip()
        if not stripped or stripped[0] not in '{["':
            return  # a bare number or word reads the same decoded
        try:
            decoded = orjson.loads(text)
        except orjson.JSONDecodeError:
            return  # not JSON (yet): read as written
        self.user(decoded, (*path, JSON))

    def token_ids(self, value: list[Any], path: Path) -> bool:
        """Token ids (a list of ints, or a list of such lists) read as their text; False when the
        list holds something else. Ids that do not decode are refused, naming the field."""
        first = value[0]
        if isinstance(first, int) and not isinstance(first, bool):
            lists = [(path, value)]
        elif isinstance(first, list):
            lists = [((*path, i), item) for i, item in enumerate(value)]
            if not all(isinstance(item, list) for _, item in lists):
                raise _bad_tokens(path, "mixes arrays of token ids with other values")
        else:
            if any(isinstance(item, int | list) and not isinstance(item, bool) for item in value):
                raise _bad_tokens(path, "mixes token ids with other values")
            return False
        encoding = tokens.encoding_name(self.model)
        for where, ids in lists:
            self.budget -= len(ids)
            if self.budget < 0:
                raise _bad_tokens(path, f"holds more than {MAX_TOKEN_IDS} token ids")
            try:
                text = tokens.decode_ids(ids, encoding)
            except ValueError as exc:
                raise _bad_tokens(where, str(exc)) from None
            if text:
                self.out.append(((*where, TokenIds(encoding)), text))
        return True


def _pick(node: _Node, value: dict[str, Any]) -> _Node:
    """The node for an object under a condition (`*(type=image)`), or `node` when none holds."""
    for field, by_value in node.variants.items():
        tag = value.get(field)
        if isinstance(tag, str):
            picked = by_value.get(tag)
            if picked is not None:
                return picked
    return node


def _bad_tokens(path: Path, why: str) -> BadRequest:
    param = format_path(path)
    return BadRequest(
        f"Invalid '{param}': {why}; token ids are decoded so the gateway's guards can read them",
        param=param,
        code="invalid_value",
    )


def under(prefixes: Iterable[str], patterns: Mapping[str, str]) -> dict[str, str]:
    """Relative `patterns` (`.name...`, or `(field=value).name...` for a condition on the prefix's
    last step), with their reasons, repeated under each prefix."""
    return {prefix + pattern: reason for prefix in prefixes for pattern, reason in patterns.items()}
