"""Decoded views: HTML entities, percent escapes and base64 (nested, bounded) are undone for the
guards, and what is found in them is reported over the encoded run the client sent."""

from __future__ import annotations

import base64
import html
import urllib.parse
from typing import Any

import pytest

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Guard, GuardContext, guard_kinds
from sluicegate.guardrails.decode import MAX_DEPTH, views
from sluicegate.guardrails.engine import CallGuards, GuardSet, apply_redactions, run_guards
from sluicegate.vault import Vault

PHRASE = "tell me about project nightingale"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decoded(text: str) -> list[str]:
    return [v.text for v in views(text)]


def test_plain_text_has_no_views() -> None:
    assert views("just words, 50% off & more; a_long_identifier_name_here") == []


def test_base64_standard_url_safe_and_unpadded() -> None:
    assert PHRASE in decoded(f"x {b64(PHRASE)} y")
    urlsafe = base64.urlsafe_b64encode(("??>" + PHRASE).encode()).decode()
    assert "-" in urlsafe or "_" in urlsafe
    assert "??>" + PHRASE in decoded(urlsafe)
    assert PHRASE in decoded(b64(PHRASE).rstrip("="))


def test_wrapped_base64_decodes_whole() -> None:
    wrapped = base64.encodebytes((PHRASE * 4).encode()).decode()
    assert "\n" in wrapped.strip()
    assert PHRASE * 4 in decoded(wrapped)


def test_nested_encodings_within_the_depth_bound() -> None:
    inner = urllib.parse.quote(PHRASE)
    assert PHRASE in decoded(b64(b64(PHRASE)))
    assert PHRASE in decoded(b64(inner))
    assert PHRASE in decoded(urllib.parse.quote(urllib.parse.quote(PHRASE)))
    assert "project" in decoded("&amp;#112;roject")
    deep = PHRASE
    for _ in range(MAX_DEPTH + 1):
        deep = b64(deep)
    assert PHRASE not in decoded(deep)


def test_binary_hashes_and_identifiers_are_not_text() -> None:
    text = (
        "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg== "
        "getUserAccountByIdentifier 0123456789abcdef0123456789abcdef01234567 "
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    )
    assert views(text) == []


def test_percent_and_entities_map_each_character_back() -> None:
    text = "a %70roject&#32;n&#x69;ghtingale b"
    (view,) = views(text)
    assert view.text == "a project nightingale b"
    start = view.text.index("project")
    assert view.span(start, start + len("project nightingale")) == (2, len(text) - 2)
    assert view.span(start, start + 1) == (2, 5)  # `p` came from `%70`


def test_percent_keeps_what_is_not_utf8_and_reads_plus_as_space() -> None:
    (view,) = views("q=project+nightingale%21%FF")
    assert view.text == "q=project nightingale!%FF"


def test_decoding_is_bounded_by_the_text_size() -> None:
    # A short text cannot make the gateway decode without end: each level is within the budget.
    bomb = b64(b64(b64("A" * 10_000)))
    total = sum(len(v.text) for v in views(bomb))
    assert total <= 4096 + 2 * len(bomb)


def test_the_encodings_setting_chooses() -> None:
    text = f"{b64(PHRASE)} %70roject"
    assert {v.encoding for v in views(text, ["percent"])} == {"percent"}
    assert views(text, []) == []


def guard(kind: str, action: str = "flag", **extra: Any) -> Guard:
    settings = extra.pop("settings")
    config = GuardConfig(name=f"t-{kind}", kind=kind, action=action, settings=settings, **extra)  # type: ignore[arg-type]
    cls = guard_kinds()[kind].cls

    async def no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        raise AssertionError

    return cls(config, cls.Settings.model_validate(settings), GuardContext(lambda: None, Vault(), no_model))


@pytest.mark.parametrize(
    "encoded",
    [b64(PHRASE), urllib.parse.quote(PHRASE), "".join(f"&#{ord(c)};" for c in PHRASE), b64(urllib.parse.quote(PHRASE))],
    ids=["base64", "percent", "html", "base64+percent"],
)
async def test_findings_cover_the_encoded_run(encoded: str) -> None:
    g = guard("regex", settings={"deny": ["project\\s+nightingale"]})
    text = f"please \u200b{encoded} thanks"
    state = CallGuards(GuardSet((g,), (), 0))
    hits, norms = await run_guards(state, [g], [text], "input")
    assert len(hits) == 1 and hits[0][1].label.startswith("deny[0]:")
    start, end = norms[True][0].span(hits[0][1].start, hits[0][1].end)
    found = text[start:end]
    if "base64" in hits[0][1].label:
        assert found == encoded  # a base64 run is reported whole
    else:
        assert html.unescape(urllib.parse.unquote(found)) == "project nightingale"  # escapes: just the phrase


async def test_redaction_replaces_the_encoded_run() -> None:
    g = guard("pii", action="redact", settings={"entities": ["EMAIL"]})
    text = f"contact: {b64('write to jane.roe@acme-corp.com')} ok"
    state = CallGuards(GuardSet((g,), (), 0))
    hits, norms = await run_guards(state, [g], [text], "input")
    assert [h[1].label for h in hits] == ["EMAIL:base64"]
    assert apply_redactions(state, [text], hits, norms) == {0: "contact: <EMAIL:BASE64_1> ok"}


async def test_a_guard_can_turn_decoding_off() -> None:
    text = f"x {b64(PHRASE)}"
    for extra in ({"decode": []}, {"decode_base64": False}):
        g = guard("regex", settings={"deny": ["nightingale"]}, **extra)
        hits, _ = await run_guards(CallGuards(GuardSet((g,), (), 0)), [g], [text], "input")
        assert hits == []


async def test_tag_characters_are_audited_once_per_text() -> None:
    g = guard("regex", settings={"deny": ["nothing-matches-this"]})
    tagged = "".join(chr(0xE0000 + ord(c)) for c in "hidden words")
    state = CallGuards(GuardSet((g,), (), 0))
    await run_guards(state, [g, g], ["plain", f"a{tagged}"], "input")
    assert [(r.kind, r.part, r.action) for r in state.records] == [("unicode_tags", "1", "flag")]
