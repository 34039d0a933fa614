"""Running guards on a call: pick the guards, scan, and block, redact or flag.

`Guardrails` is built once per config snapshot: it constructs every configured guard, compiles
the patterns of the pattern-based ones into one matcher (`matcher.py`), and per (consumer, model)
the input and output guard lists, so a call with no guard attached pays one dict lookup. Guards
see normalised texts, scanned once per text variant for all their patterns; findings map back to
the client's own text, so redaction replaces exactly what was sent. The audit gets guard, action,
part and label only.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sluicegate import tokens
from sluicegate.dialects import holds_token_ids, request_texts, response_texts
from sluicegate.dialects.fields import compile_all
from sluicegate.dialects.paths import Path, PathError, format_path, replace_paths
from sluicegate.errors import BadRequest, ServiceUnavailable
from sluicegate.guardrails.base import (
    Finding,
    Guard,
    GuardContext,
    GuardUnavailable,
    guard_kind,
    guard_kind_names,
    joined,
)
from sluicegate.guardrails.decode import View, views
from sluicegate.guardrails.matcher import Matcher
from sluicegate.guardrails.normalize import Normalized, normalize

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import Decoding, GatewayConfig, GuardConfig
    from sluicegate.config.snapshot import Consumer, Route
    from sluicegate.routing.rules import Pins

log = logging.getLogger("sluicegate.guardrails")
#: the audit record's kind and label when a text held Unicode tag characters (never a block alone)
TAGS_RECORD = "unicode_tags"


class Blocked(BadRequest):
    """A guard refused the call's content."""

    code = "content_blocked"
    decision = "blocked"


class GuardFailed(ServiceUnavailable):
    """A guard could not run and fails closed."""

    code = "guard_unavailable"


@dataclass(frozen=True, slots=True)
class GuardSet:
    """The guards of one (consumer, model): what they read and how far a match can reach."""

    input: tuple[Guard, ...]
    output: tuple[Guard, ...]
    #: the stream hold-back window in characters; None: hold the whole answer (an unbounded guard)
    window: int | None
    #: an input `redact` guard asks for its placeholders to be restored in the answer
    restore: bool = False
    #: the snapshot's compiled patterns (None: made for these guards on first use)
    matcher: Matcher | None = None


@dataclass(slots=True)
class GuardRecord:
    """One guard decision, as the audit keeps it (no matched text)."""

    guard: str
    kind: str
    action: str
    direction: str
    part: str
    label: str

    def as_dict(self) -> dict[str, str]:
        return {
            "guard": self.guard,
            "kind": self.kind,
            "action": self.action,
            "direction": self.direction,
            "part": self.part,
            "label": self.label,
        }


@dataclass(slots=True)
class CallGuards:
    """Guard state of one call: the set that applies, decisions so far, placeholders made."""

    guards: GuardSet
    records: list[GuardRecord] = field(default_factory=list)
    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)
    #: placeholder -> original value, for the guards with `restore: true`
    restorable: dict[str, str] = field(default_factory=dict)
    _matcher: Matcher | None = None

    @property
    def matcher(self) -> Matcher:
        """The compiled patterns of the call's guards."""
        if self._matcher is None:
            self._matcher = self.guards.matcher or Matcher((*self.guards.input, *self.guards.output))
        return self._matcher


def build_guard(config: GuardConfig, context: GuardContext) -> Guard:
    """Construct one configured guard (raises ValueError with a clear message)."""
    kind = guard_kind(config.kind)
    if kind is None:
        raise ValueError(f"unknown guard kind '{config.kind}' (known: {', '.join(guard_kind_names())})")
    settings = kind.cls.Settings.model_validate(config.settings)
    return kind.cls(config, settings, context)


class Guardrails:
    """The guards of one snapshot, compiled, and the lists that apply per consumer and model."""

    def __init__(self, config: GatewayConfig, context: GuardContext, pins: Pins | None = None) -> None:
        self.guards = {g.name: build_guard(g, context) for g in config.guards}
        for guard in self.guards.values():
            guard.prepare()
        if self.guards:
            # Guards read the texts of bodies: their readings compile with the config, not on a call.
            compile_all()
        self.matcher = Matcher(self.guards.values())
        #: the snapshot's routing pins: the guards their conditions read run on the calls they cover
        self.pins = pins
        self._sets: dict[tuple[str, str], GuardSet | None] = {}

    def for_call(self, consumer: Consumer, route: Route) -> GuardSet | None:
        """The guards of this consumer (and its groups) and this model; None when there are none."""
        key = (consumer.name, route.name)
        try:
            return self._sets[key]
        except KeyError:
            pass
        # Guards that routing conditions read (a model's `when` rules, the consumer's pins) run too.
        routing = [name for choice in route.rules for name in sorted(choice.match.found)]
        if self.pins is not None:
            routing += self.pins.guard_names(consumer)
        names = list(dict.fromkeys([*consumer.guards, *route.config.guards, *routing]))
        guards = [self.guards[n] for n in names if n in self.guards]
        inputs = tuple(g for g in guards if g.config.applies_to in ("input", "both"))
        outputs = tuple(g for g in guards if g.config.applies_to in ("output", "both"))
        reaches = [g.reach for g in outputs]
        window = None if None in reaches else max((r for r in reaches if r is not None), default=0)
        restore = any(g.config.restore and g.action == "redact" for g in inputs)
        result = GuardSet(inputs, outputs, window, restore, self.matcher) if guards else None
        if len(self._sets) > 10_000:
            self._sets.clear()
        self._sets[key] = result
        return result


@dataclass(slots=True)
class TextScan:
    """What scanning some texts with some guards found, and the forms of the texts it read."""

    hits: list[tuple[Guard, Finding]]
    #: the texts normalised per variant: None (as sent, for remote guards), True (case folded), False
    norms: dict[bool | None, list[Normalized]]
    #: per set of encodings, the decoded views of each text (normalised without case folding)
    decoded: dict[frozenset[Decoding], list[list[View]]]
    #: per variant, the patterns that one pass over the joined texts says may match
    passes: dict[bool, frozenset[int]]
    #: per (text, view, variant): the view normalised, and what one pass over it says may match
    inner: dict[tuple[int, int, bool], tuple[Normalized, frozenset[int] | None]] = field(default_factory=dict)


async def run_guards(
    state: CallGuards, guards: Sequence[Guard], texts: Sequence[str], direction: str
) -> tuple[list[tuple[Guard, Finding]], dict[bool | None, list[Normalized]]]:
    """Scan `texts` with `guards`; raise `Blocked` on a block, `GuardFailed` when one fails closed."""
    scan = await scan_texts(state, guards, texts, direction)
    return scan.hits, scan.norms


async def scan_texts(
    state: CallGuards, guards: Sequence[Guard], texts: Sequence[str], direction: str, *, block: bool = True
) -> TextScan:
    """Scan `texts` with `guards`: every finding, and what was read. `GuardFailed` when a guard
    fails closed; with `block`, `Blocked` at the first finding of a blocking guard (without, the
    caller decides: a stream waits until a match is final)."""
    scan = TextScan([], {}, {}, {})
    norms = scan.norms
    matcher = state.matcher
    plains: dict[bool | None, list[str]] = {}
    for guard in guards:
        # Remote services get the text as sent (they do their own analysis); local rules match
        # on normalised text. The key is the variant, so each is computed once per request.
        variant = None if guard.remote else guard.casefold
        plain = plains.get(variant)
        if plain is None:
            normalized = norms.get(variant)
            if normalized is None:
                normalized = norms[variant] = (
                    [Normalized(t, None, t) for t in texts]
                    if variant is None
                    else [normalize(t, casefold=variant) for t in texts]
                )
                if variant is not None:
                    _note_tags(state, normalized, direction)
            plain = plains[variant] = [n.text for n in normalized]
        try:
            if guard.remote:
                findings = await asyncio.wait_for(guard.ascan(plain), guard.config.timeout_s)
            elif guard.blocking:
                findings = await asyncio.to_thread(_scan_local, guard, plain, texts, scan, matcher)
            else:
                findings = _scan_local(guard, plain, texts, scan, matcher)
        except (GuardUnavailable, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else "is unavailable"
            if guard.config.on_error == "block":
                raise GuardFailed(
                    f"Guard '{guard.name}' {reason}; the call is refused", rule=f"guards.{guard.name}"
                ) from None
            log.warning("guard %s %s; its on_error lets the call through", guard.name, reason)
            state.records.append(GuardRecord(guard.name, guard.kind, "error_allowed", direction, "", reason))
            continue
        for finding in findings:
            scan.hits.append((guard, finding))
        if block and findings and guard.action == "block":
            refuse(state, guard, findings, direction)
    return scan


def refuse(state: CallGuards, guard: Guard, findings: Sequence[Finding], direction: str) -> None:
    """Record a blocking guard's findings and raise `Blocked`."""
    for finding in findings:
        state.records.append(GuardRecord(guard.name, guard.kind, "block", direction, str(finding.index), finding.label))
    raise Blocked(
        f"Blocked by guard '{guard.name}': the {direction} contains {findings[0].label}",
        rule=f"guards.{guard.name}",
    )


def _scan_local(
    guard: Guard, plain: list[str], texts: Sequence[str], scan: TextScan, matcher: Matcher
) -> list[Finding]:
    """One local guard on the normalised texts, with the patterns the variant's one pass allows,
    then on their decoded views."""
    variant = matcher.variant(guard)
    if variant is None:
        findings = guard.scan(plain)
    else:
        found = scan.passes.get(variant)
        if found is None:
            # ASCII texts: one pass for both variants (normalised, such a text is itself).
            both = matcher.maybe_ascii(joined(texts))
            if both is not None:
                scan.passes.update(both)
                found = both[variant]
            else:
                found = scan.passes[variant] = matcher.maybe(variant, joined(plain))
        findings = guard.scan_prefiltered(plain, matcher.candidates(guard, found))
    if guard.decodings:
        known = scan.decoded.get(guard.decodings)
        if known is None or any(known):  # not decoded yet, or something was
            findings += _scan_decoded(guard, findings, texts, scan, matcher)
    return findings


def _note_tags(state: CallGuards, normalized: Sequence[Normalized], direction: str) -> None:
    """Audit that a text held Unicode tag characters (decoded for the guards), once per text."""
    for index, norm in enumerate(normalized):
        if not norm.tags:
            continue
        record = GuardRecord("", TAGS_RECORD, "flag", direction, str(index), TAGS_RECORD)
        if record not in state.records:
            state.records.append(record)


def decoded_views(
    scan: TextScan, texts: Sequence[str], encodings: frozenset[Decoding], matcher: Matcher
) -> list[list[View]]:
    """The decoded views of each text (normalised with case kept), once per scan; none without
    a plausible encoded run (one pass of the matcher tells)."""
    per_text = scan.decoded.get(encodings)
    if per_text is None:
        # Views are decoded from the text normalised without case folding (base64 is
        # case-sensitive; zero-width padding and look-alikes are gone), once per request.
        cased = scan.norms.get(False)
        if cased is None:
            cased = scan.norms[False] = [normalize(t, casefold=False) for t in texts]
        found = scan.passes.get(False)
        if found is None:
            found = scan.passes[False] = matcher.maybe(False, joined([n.text for n in cased]))
        if matcher.may_hold_encoded(found):
            per_text = [views(n.text, encodings) for n in cased]
        else:
            per_text = [[] for _ in cased]
        scan.decoded[encodings] = per_text
    return per_text


def _scan_decoded(
    guard: Guard, found: Sequence[Finding], texts: Sequence[str], scan: TextScan, matcher: Matcher
) -> list[Finding]:
    """Findings in the decoded views of the texts, reported over the encoded run they come from."""
    per_text = decoded_views(scan, texts, guard.decodings, matcher)
    if not any(per_text):
        return []
    cased = scan.norms[False]
    target = scan.norms[guard.casefold]
    variant = matcher.variant(guard)
    out: list[Finding] = []
    for index, text_views in enumerate(per_text):
        taken = [(f.start, f.end, f.label) for f in found if f.index == index]
        for number, view in enumerate(text_views):
            # Each view is normalised and passed over once per variant, whatever the guards.
            key = (index, number, guard.casefold)
            cached = scan.inner.get(key)
            if cached is None or (variant is not None and cached[1] is None):
                inner = normalize(view.text, casefold=guard.casefold) if cached is None else cached[0]
                cached = scan.inner[key] = (inner, None if variant is None else matcher.maybe(variant, inner.text))
            inner, maybe = cached
            if variant is None or maybe is None:
                # A kind without patterns reads the whole view (another guard's pass says nothing).
                inner_findings = guard.scan([inner.text])
            else:
                inner_findings = guard.scan_prefiltered([inner.text], matcher.candidates(guard, maybe))
            for f in inner_findings:
                # view -> text normalised with case kept -> the client's text -> the guard's variant
                start, end = cased[index].span(*view.span(*inner.span(f.start, f.end)))
                origin = target[index].origin
                if origin is not None:
                    start, end = bisect_left(origin, start), bisect_left(origin, end)
                if any(s < end and start < e and label == f.label for s, e, label in taken):
                    continue  # the plain text (or another view) showed it already
                taken.append((start, end, f.label))
                out.append(Finding(index, start, end, f"{f.label}:{view.encoding}", f.score))
    return out


def placeholder(state: CallGuards, label: str, original: str) -> str:
    """A stable placeholder per (label, value) within one call: `<EMAIL_1>`."""
    key = (label, original)
    token = state.placeholders.get(key)
    if token is None:
        n = sum(1 for lab, _ in state.placeholders if lab == label) + 1
        token = state.placeholders[key] = f"<{label.upper()}_{n}>"
    return token


def apply_redactions(
    state: CallGuards,
    texts: Sequence[str],
    hits: list[tuple[Guard, Finding]],
    norms: dict[bool | None, list[Normalized]],
) -> dict[int, str]:
    """The new text of every part that a `redact` guard matched (others unchanged)."""
    spans: dict[int, list[tuple[int, int, str, bool]]] = {}
    for guard, finding in hits:
        if guard.action != "redact":
            continue
        variant = None if guard.remote else guard.casefold
        start, end = norms[variant][finding.index].span(finding.start, finding.end)
        spans.setdefault(finding.index, []).append((start, end, finding.label, guard.config.restore))
    out: dict[int, str] = {}
    for index, items in spans.items():
        text = texts[index]
        merged: list[tuple[int, int, str, bool]] = []
        for start, end, label, restore in sorted(items):
            if merged and start < merged[-1][1]:
                last = merged[-1]
                merged[-1] = (last[0], max(last[1], end), last[2], last[3] and restore)
            else:
                merged.append((start, end, label, restore))
        pieces = []
        pos = 0
        for start, end, label, restore in merged:
            pieces.append(text[pos:start])
            token = placeholder(state, label, text[start:end])
            if restore:
                state.restorable[token] = text[start:end]
            pieces.append(token)
            pos = end
        pieces.append(text[pos:])
        out[index] = "".join(pieces)
    return out


def _record(state: CallGuards, hits: list[tuple[Guard, Finding]], paths: Sequence[Path], direction: str) -> None:
    for guard, finding in hits:
        part = format_path(paths[finding.index]) if finding.index < len(paths) else str(finding.index)
        state.records.append(GuardRecord(guard.name, guard.kind, guard.action, direction, part, finding.label))


async def check_request(call: Call, state: CallGuards) -> None:
    """Input guards on every text of the request; redactions replace `call.body` with a copy.

    The client's parsed body is never changed: the copy shares what no redaction touched."""
    body = call.body
    if body is None or not state.guards.input:
        return
    # Token ids mean what the upstream model's encoding says they mean.
    route = call.snapshot.route_for(call.model_requested) if call.model_requested else None
    model = route.upstream_model if route is not None else None
    if holds_token_ids(call.endpoint, body):
        # Decoding them needs the encoding: its first load happens in a worker thread.
        named = body.get("model")
        await tokens.load(model or (named if isinstance(named, str) else None))
    refs = request_texts(call.endpoint, body, model)
    if not refs:
        return
    paths = [p for p, _ in refs]
    redacted = await _guard_parts(state, state.guards.input, paths, [t for _, t in refs], "input")
    if redacted:
        call.body = _rewrite(state, body, paths, redacted, "input", copy=True)


async def check_answer(call: Call, state: CallGuards, data: dict[str, Any], endpoint: str) -> bool:
    """Output guards on a complete answer (of `endpoint`'s shape), then placeholders restored;
    True when `data` changed (in place)."""
    trace = call.trace
    if trace is None or not trace.recording:
        return await _check_answer(state, data, endpoint)
    with trace.section("guardrails.output"):
        return await _check_answer(state, data, endpoint)


async def _check_answer(state: CallGuards, data: dict[str, Any], endpoint: str) -> bool:
    refs = response_texts(endpoint, data)
    if not refs:
        return False
    paths = [p for p, _ in refs]
    texts = [t for _, t in refs]
    changed: dict[int, str] = {}
    if state.guards.output:
        changed = await _guard_parts(state, state.guards.output, paths, texts, "output")
    if state.restorable:
        for index, original in enumerate(texts):
            text = changed.get(index, original)
            for token, value in state.restorable.items():
                if token in text:
                    text = text.replace(token, value)
            if text != original:
                changed[index] = text
    if not changed:
        return False
    _rewrite(state, data, paths, changed, "output", copy=False)
    _drop_logprobs(data, [paths[index] for index in changed])
    return True


def _rewrite(
    state: CallGuards, body: Any, paths: Sequence[Path], changed: dict[int, str], direction: str, *, copy: bool
) -> Any:
    """`body` with the changed texts in place: strings replaced, keys renamed, numbers turned into
    their placeholder, JSON text and token ids written again. When a change cannot be written back
    (JSON text that an earlier redaction broke, or a body nested too deep) the call is refused
    rather than sent with the text unredacted."""
    try:
        return replace_paths(body, [(paths[index], text) for index, text in changed.items()], copy=copy)
    except (PathError, RecursionError):
        part = format_path(paths[min(changed)])
        state.records.append(GuardRecord("redaction", "engine", "block", direction, part, "unwritable"))
        raise Blocked(
            f"A redaction in the {direction} could not be written back ({part}); the call is refused",
            rule="guards",
        ) from None


def _drop_logprobs(data: dict[str, Any], paths: Sequence[Path]) -> None:
    """Logprobs repeat a choice's text token by token: a choice whose text changed loses them."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        return
    for path in paths:
        if len(path) > 1 and path[0] == "choices" and isinstance(path[1], int) and path[1] < len(choices):
            choice = choices[path[1]]
            if isinstance(choice, dict) and choice.get("logprobs") is not None:
                choice["logprobs"] = None


async def _guard_parts(
    state: CallGuards, guards: Sequence[Guard], paths: Sequence[Path], texts: Sequence[str], direction: str
) -> dict[int, str]:
    """Run guards over the parts of a request or answer; record decisions; return redacted parts."""
    try:
        hits, norms = await run_guards(state, guards, texts, direction)
    finally:
        _fix_parts(state, paths)
    _record(state, hits, paths, direction)
    return apply_redactions(state, texts, hits, norms)


def _fix_parts(state: CallGuards, paths: Sequence[Path]) -> None:
    # Records made while scanning (blocks, tag characters) carry the text index until here.
    for record in state.records:
        if record.part.isdigit() and int(record.part) < len(paths):
            record.part = format_path(paths[int(record.part)])
