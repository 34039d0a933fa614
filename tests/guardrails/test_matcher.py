"""The one-pass matcher finds exactly what running every pattern finds: on the labelled corpus,
its obfuscated variants, near misses made by editing them, and random and hostile texts; and
without hyperscan (or for a pattern it cannot take) every pattern simply runs."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails import matcher as matcher_module
from sluicegate.guardrails.base import Guard, GuardContext
from sluicegate.guardrails.engine import build_guard
from sluicegate.guardrails.matcher import Matcher, PatternSet, as_bytes, pattern_set
from sluicegate.guardrails.normalize import normalize
from sluicegate.guardrails.pii import ENTITIES, NER_ENTITIES
from sluicegate.guardrails.prefilter import prefilter
from sluicegate.vault import Vault
from tests.guardrails.test_corpus import CORPUS, block_samples, load, pass_samples


async def _no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise AssertionError("no model here")


CONTEXT = GuardContext(http=lambda: None, vault=Vault(), complete=_no_model)

#: user patterns that use what Python's `re` offers: lookarounds, back references, inline and
#: scoped flags, categories, non-ASCII literals, possessive and atomic groups, conditionals
USER_PATTERNS = [
    r"project\s+nightingale",
    r"operation\s+\w+fall",
    r"(?<![\w.])acme-\d{3,}(?!\d)",
    r"\b(\w)\w*\1\b",
    r"(?i:CAFÉ)\s*\d+",
    r"(?s)begin.{0,40}?end",
    r"[^\W\d_]{4}[\d٣]{2}",
    r"\S+@\S+\.\S{2,}",
    r"(?>ab|a)bc",
    r"x++y",
    r"(<)?tag(?(1)>|;)",
    r"[\u0430-\u044f]{3,}\d",
    r"k\s?e\s?y",
    r"\x1c|\u2028",
    r"^\s*(?:password|passwd)\s*[:=]",
    r"[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){3}",
    r"(?-i:nightjar)",
]
CONFIGS = {
    "pii": {"entities": [e for e in ENTITIES if e not in NER_ENTITIES], "allow": [r"@example\.org$"]},
    "secrets": {},
    "regex": {"deny": USER_PATTERNS, "allow": [r"project\s+nightingale\s+bird"]},
    "words": {"words": ["operation bluebird", "Geheimprojekt Ω", "c++", ".env", "\u017fecret"]},
}
ODD = "".join(
    [
        "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000",  # whitespace to `re`
        "\u212a\u017f\u0130\u0131",  # `re` folds these onto k, s, i, i
        "ßяжЖЯΩωéÉ٣४\uff10\u0301\u200b\ud800😀中",
    ]
)
#: texts that only Unicode-aware matching sees through: folded letters, other digits, odd spaces
HOSTILE = [
    "the \u212aey is here",
    "project n\u0131ghtingale",
    "PROJECT N\u0130GHTINGALE",
    "operation \u017fnowfall",
    "project\x1cnightingale",
    "project\u2028nightingale",
    "acme-\u0663\u0664\u0665 shipped",
    "caf\u00c9 12",
    "the \u017fecret plan",
    "mail \u212a@corp.io",
    "the NIGHTJAR flies",
]
PIECES = [
    "4111 1111 1111 1111",
    "+33 6 12 34 56 78",
    "(020) 7946 0018",
    "jane.doe@corp.io",
    "GB82 WEST 1234 5698 7654 32",
    "10.0.3.15",
    "2001:db8::1",
    "sk-proj-",
    "AKIA",
    "eyJ",
    "-----BEGIN RSA PRIVATE KEY-----",
    "ghp_",
    "project  nightingale",
    "operation bluebird",
    "123-45-6789",
    "aws_secret_access_key = ",
]


def _guards() -> list[Guard]:
    return [
        build_guard(GuardConfig(name=kind, kind=kind, action="flag", settings=settings), CONTEXT)
        for kind, settings in CONFIGS.items()
    ]


def _edit(text: str, rng: random.Random) -> str:
    """A near miss: a few characters inserted, dropped or replaced."""
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(chars) + 1)
        what = rng.random()
        alphabet = "0123456789 -.:@_/+abcXYZ" + ODD
        if what < 0.4:
            chars.insert(at, rng.choice(alphabet))
        elif chars and what < 0.7:
            del chars[min(at, len(chars) - 1)]
        elif chars:
            chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.3:
            parts.append(rng.choice(PIECES))
        elif kind < 0.6:
            parts.append("".join(rng.choice("0123456789 .-+()/:") for _ in range(rng.randint(1, 20))))
        elif kind < 0.8:
            parts.append("".join(rng.choice(ODD + "abcdefXYZ_=") for _ in range(rng.randint(1, 12))))
        else:
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(8, 48))))
    return rng.choice(["", " ", "\n"]).join(parts)


def _texts() -> list[str]:
    rng = random.Random(20261203)
    base = [s.text for s in (*pass_samples(), *block_samples(), *load(CORPUS / "limits.txt"))]
    edited = [_edit(t, rng) for t in rng.sample(base, 200)]
    randoms = [_random_text(rng) for _ in range(250)]
    texts = [*base, *edited, *randoms, *HOSTILE]
    # The engine scans normalised text; the prefilter must also hold on any text at all.
    # (JSON cannot carry a lone surrogate, so normalisation never meets one.)
    sample = [t for t in rng.sample(texts, 150) if "\ud800" not in t]
    return texts + [normalize(t, casefold=c).text for t in sample for c in (True, False)]


TEXTS = _texts()


@pytest.fixture(scope="module")
def setup() -> tuple[list[Guard], Matcher]:
    guards = _guards()
    return guards, Matcher(guards)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_one_pass_finds_what_every_pattern_finds(setup: tuple[list[Guard], Matcher], kind: str) -> None:
    guards, matcher = setup
    guard = next(g for g in guards if g.kind == kind)
    variant = matcher.variant(guard)
    assert variant is not None
    skipped = 0
    for text in TEXTS:
        candidates = matcher.candidates(guard, matcher.maybe(variant, text))
        for i, pattern in enumerate(guard.patterns()):
            if pattern.search(text):
                assert i in candidates, (pattern.pattern, text)
        skipped += len(guard.patterns()) - len(candidates)
        assert guard.scan_prefiltered([text], candidates) == guard.scan([text]), text
    assert skipped > len(TEXTS) // 2  # the prefilter does leave patterns out


def test_one_pass_over_an_ascii_text_serves_both_variants(setup: tuple[list[Guard], Matcher]) -> None:
    guards, matcher = setup
    for text in [t for t in TEXTS if t.isascii()]:
        both = matcher.maybe_ascii(text)
        assert both is not None
        for guard in guards:
            plain = normalize(text, casefold=guard.casefold).text  # the text itself, or its lower case
            candidates = matcher.candidates(guard, both[guard.casefold])
            for i, pattern in enumerate(guard.patterns()):
                if pattern.search(plain):
                    assert i in candidates, (pattern.pattern, text)
            assert guard.scan_prefiltered([plain], candidates) == guard.scan([plain]), text
    assert matcher.maybe_ascii("caf\u00e9") is None


def test_several_texts_are_scanned_as_one(setup: tuple[list[Guard], Matcher]) -> None:
    guards, matcher = setup
    texts = ["call me on +33 6 12", "34 56 78 tomorrow", "project", "nightingale"]
    for guard in guards:
        variant = matcher.variant(guard)
        assert variant is not None
        candidates = matcher.candidates(guard, matcher.maybe(variant, "\n".join(texts)))
        assert guard.scan_prefiltered(texts, candidates) == guard.scan(texts)


def test_every_pattern_here_gets_a_prefilter_that_compiles(setup: tuple[list[Guard], Matcher]) -> None:
    guards, _ = setup
    for guard in guards:
        specs = [(p.pattern, p.flags, False) for p in guard.patterns()]
        assert all(prefilter(*spec) is not None for spec in specs)
        assert PatternSet(specs).always == set()


def test_non_ascii_characters_stand_as_their_class() -> None:
    assert as_bytes("abc") == b"abc"
    # a decimal digit, a letter, a space, anything else (a lone surrogate too)
    assert as_bytes("a٣жß\u3000\u2028-😀\ud800") == b"a\x80\x81\x81\x82\x82-\x83\x83"


def test_a_pattern_without_a_prefilter_always_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    patterns = PatternSet([("a*", 0, False), ("abc", 0, False)])  # the first matches the empty string
    assert patterns.always == {0}
    assert patterns.maybe("xyz") == {0} and patterns.maybe("xabcx") == {0, 1}
    # A prefilter hyperscan refuses: that pattern runs on every text, the others keep theirs.
    real = matcher_module.prefilter
    monkeypatch.setattr(matcher_module, "prefilter", lambda s, f, c: "(" if s == "def" else real(s, f, c))
    patterns = PatternSet([("abc", 0, False), ("def", 0, False), ("ghi", 0, False)])
    assert patterns.always == {1}
    assert patterns.maybe("xyz") == {1} and patterns.maybe("ghi") == {1, 2}


@pytest.fixture
def no_hyperscan(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(matcher_module, "_hyperscan", lambda: None)
    pattern_set.cache_clear()  # compiled sets are shared by pattern list
    yield
    pattern_set.cache_clear()


@pytest.mark.usefixtures("no_hyperscan")
def test_without_hyperscan_every_pattern_runs() -> None:
    guards = _guards()
    matcher = Matcher(guards)
    for guard in guards:
        variant = matcher.variant(guard)
        assert variant is not None
        candidates = matcher.candidates(guard, matcher.maybe(variant, "nothing at all"))
        assert candidates == set(range(len(guard.patterns())))
        for text in TEXTS[:50]:
            found = matcher.candidates(guard, matcher.maybe(variant, text))
            assert guard.scan_prefiltered([text], found) == guard.scan([text])
