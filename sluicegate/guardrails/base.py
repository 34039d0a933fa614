"""The guard contract, its findings, and the registry of guard kinds.

A guard kind is one module: a settings model (pydantic, `extra="forbid"`, validated when the
config loads), a class that scans texts and reports `Finding`s, and one `register_guard_kind`
line (a built-in kind is also named in `BUILTIN_KINDS`, so that its module, and what that
imports, loads only when a config uses the kind). Guards see *normalised* text (see `normalize`)
and report offsets into it; the framework maps them back, redacts, blocks or flags, and audits
kinds and labels, never the matched text.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from aiohttp import ClientSession

    from sluicegate.config.model import GuardConfig
    from sluicegate.vault import Vault

Action = Literal["block", "redact", "flag"]
Direction = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One match: which text (by index in the list scanned), where in it, and what it is."""

    index: int
    start: int
    end: int
    #: what matched, as a label safe to audit: `EMAIL`, `aws_access_key`, `deny[2]` - never the text
    label: str
    #: a detector's confidence in [0, 1] where it has one (classifiers, judges)
    score: float | None = None


S = TypeVar("S", bound="GuardSettings")


def settings_as(settings: GuardSettings, cls: type[S]) -> S:
    """The settings as the kind's own model (the registry validated them with `cls`)."""
    if not isinstance(settings, cls):
        raise TypeError(f"this guard kind needs {cls.__name__}, not {type(settings).__name__}")
    return settings


def check_patterns(patterns: list[str], flags: int, what: str = "pattern") -> list[str]:
    """Settings validator: every pattern compiles (a bad one is a config error with its index)."""
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"{what} [{i}] is not a valid regular expression: {exc}") from None
    return patterns


class Every:
    """A container that holds every pattern index: no prefilter ran, so every pattern may match."""

    __slots__ = ()

    def __contains__(self, index: object) -> bool:
        return True


#: `find`'s candidates when every pattern must run
EVERY = Every()


class GuardUnavailable(Exception):
    """A guard could not run (its service down or too slow); the guard's `on_error` decides."""


class GuardSettings(BaseModel):
    """Base of every guard kind's settings: unknown keys are config errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class GuardContext:
    """What a guard may use besides its settings; built once by the gateway."""

    #: the gateway's HTTP client session (None until startup)
    http: Callable[[], ClientSession | None]
    vault: Vault
    #: ask a configured model through the gateway's own routing, without guards (no recursion):
    #: `await complete(model, messages, max_tokens)` -> the answer's text
    complete: Callable[[str, list[dict[str, object]], int], Awaitable[str]]


class Guard:
    """A configured guard: scans normalised texts and reports findings.

    Local kinds override `scan_text` (one text at a time) or `scan` (the whole request at once,
    for limits across texts); remote kinds set `remote = True` and override `ascan`.
    """

    #: the kind's settings model; the registry validates `GuardConfig.settings` with it
    Settings: ClassVar[type[GuardSettings]] = GuardSettings
    #: calls a service: scanned off the hot path with `ascan`, bounded by a timeout
    remote: ClassVar[bool] = False
    #: False for kinds whose patterns depend on letter case (API keys): they get text without case folding
    casefold: ClassVar[bool] = True
    #: True when `scan` takes long (a model): the engine runs it in a worker thread, off the event loop
    blocking: bool = False
    #: how far past a match the kind's checks read (a validator looking at what follows): on a
    #: stream, a finding closer than this to the end of the text so far waits for more text
    right_context: ClassVar[int] = 0

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        self.name = config.name
        self.kind = config.kind
        self.action: Action = config.action
        self.config = config
        self.context = context
        #: the encodings whose decoded form the guard scans too
        self.decodings = config.decodings()

    def prepare(self) -> None:
        """Load now what the first scan would load on first use (the engine calls this for the
        guards of a config as it loads; a guard built for another use, the audit's, does not)."""

    @property
    def reach(self) -> int | None:
        """The longest span (normalised characters) a finding can cover; None when it needs the
        whole text.

        On streams, kinds that cannot tell where a match may begin (`pending`) hold back this
        many characters; None holds the whole answer.
        """
        return None

    def patterns(self) -> Sequence[re.Pattern[str]]:
        """Pattern-based kinds: one regular expression per check `find` makes, in its order, that
        matches in every text where the check can report a finding (the check's own pattern, or
        a cheaper necessary condition). The engine scans a text once for all of them (and every
        guard's), and tells `find` which checks may report."""
        return ()

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Matches in one normalised text, as (start, end, label)."""
        raise NotImplementedError

    def find(self, text: str, candidates: Container[int]) -> list[tuple[int, int, str]]:
        """`scan_text`, running only the patterns whose index in `patterns()` is in `candidates`
        (the others cannot match: the engine's prefilter said so). Pattern-based kinds override it."""
        return self.scan_text(text)

    def pending(self, text: str, start: int) -> int | None:
        """Streams: where in the normalised `text` (at or after `start`) the earliest match begins
        that more text could still complete, extend or invalidate; None when none can.

        Text before it can be released. The default cannot tell: the last `reach` characters
        (from `start` when `reach` is None).
        """
        reach = self.reach
        if reach is None:
            return start
        return max(start, len(text) - reach) if len(text) > start else None

    def scan(self, texts: Sequence[str]) -> list[Finding]:
        """Findings across every text of a request.

        The default scans the texts joined by newlines (`joined`), so a phrase split across two
        messages or two parts is still found, and maps each match back to the texts it touches.
        """
        return self.scan_prefiltered(texts, EVERY)

    def scan_prefiltered(self, texts: Sequence[str], candidates: Container[int]) -> list[Finding]:
        """`scan`, running only the patterns in `candidates` (see `find`); the engine calls it for
        kinds with `patterns()`."""
        if len(texts) == 1:
            return [Finding(0, s, e, label) for s, e, label in self.find(texts[0], candidates)]
        starts = []
        pos = 0
        for text in texts:
            starts.append(pos)
            pos += len(text) + 1
        findings = []
        for s, e, label in self.find(joined(texts), candidates):
            i = bisect_right(starts, s) - 1
            while i < len(texts) and starts[i] < e:
                lo = max(s - starts[i], 0)
                hi = min(e - starts[i], len(texts[i]))
                if hi > lo or s == e:
                    findings.append(Finding(i, lo, hi, label))
                i += 1
        return findings

    async def ascan(self, texts: Sequence[str]) -> list[Finding]:
        """Remote kinds: findings across every text (raise `GuardUnavailable` when the service fails)."""
        return self.scan(texts)


def joined(texts: Sequence[str]) -> str:
    """The one text `Guard.scan` reads for several: joined by newlines."""
    return texts[0] if len(texts) == 1 else "\n".join(texts)


GuardFactory = Callable[["GuardConfig", GuardSettings, GuardContext], Guard]


@dataclass(frozen=True, slots=True)
class GuardKind:
    """A registered `kind:` of the guards config."""

    name: str
    cls: type[Guard]


_KINDS: dict[str, GuardKind] = {}
#: the built-in kinds and the module (in this package) that registers each
BUILTIN_KINDS = {
    "regex": "regex",
    "words": "words",
    "length": "length",
    "pii": "pii",
    "secrets": "secrets",
    "prompt_injection": "injection",
    "webhook": "webhook",
    "llm_judge": "llm_judge",
    "moderation": "moderation",
}


def register_guard_kind(name: str, cls: type[Guard]) -> None:
    """Make `kind: <name>` available in the guards config."""
    if name in _KINDS:
        raise ValueError(f"guard kind {name!r} is registered twice")
    _KINDS[name] = GuardKind(name, cls)


def guard_kind(name: str) -> GuardKind | None:
    """A registered guard kind by name, a built-in one imported on first use; None when unknown."""
    kind = _KINDS.get(name)
    if kind is None and name in BUILTIN_KINDS:
        _load_builtin(BUILTIN_KINDS[name])
        kind = _KINDS.get(name)
    return kind


def guard_kind_names() -> list[str]:
    """The name of every guard kind, built-in or registered, sorted; imports none."""
    return sorted({*BUILTIN_KINDS, *_KINDS})


def guard_kinds() -> dict[str, GuardKind]:
    """Every registered guard kind (every built-in one imported)."""
    for module in BUILTIN_KINDS.values():
        _load_builtin(module)
    return _KINDS


def _load_builtin(module: str) -> None:
    # Importing a kind's module runs its registration line; missing modules are not built yet.
    import importlib

    try:
        importlib.import_module(f"sluicegate.guardrails.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sluicegate.guardrails.{module}":
            raise
