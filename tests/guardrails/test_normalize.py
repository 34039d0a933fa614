"""Normalisation: what guards read is what a model reads, with every disguise taken off, and a map
back to the client's offsets."""

from __future__ import annotations

import random
import unicodedata

import pytest

from sluicegate.guardrails.normalize import normalize, table_versions, tables
from sluicegate.guardrails.regex import fold_pattern

TAGGED = "".join(chr(0xE0000 + ord(c)) for c in "project nightingale")


def test_the_data_file_names_its_sources() -> None:
    versions = table_versions()
    assert versions["icu"] == "78.3"
    assert versions["unicode"] == "17.0"
    assert versions["unicodedata"]
    data = tables()
    # Default_Ignorable_Code_Point, sampled across the kinds it covers
    for cp in (0x00AD, 0x034F, 0x115F, 0x180B, 0x200B, 0x2060, 0x3164, 0xFE0F, 0xFFA0, 0x1BCA0, 0xE0001, 0xE0FFF):
        assert cp in data.ignorable, hex(cp)
    for cp in (0x20, 0x41, 0x00A0, 0x4E00):
        assert cp not in data.ignorable, hex(cp)


#: (character, prototype with case kept, prototype case folded), from TR39 via ICU
SAMPLES = [
    ("\u0430", "a", "a"),  # Cyrillic small a
    ("\u0410", "A", "a"),  # Cyrillic capital A
    ("\u0412", "B", "b"),  # Cyrillic capital VE looks like B
    ("\u0406", "I", "i"),  # Cyrillic capital Byelorussian-Ukrainian I: an upper-case letter, so I
    ("\u04cf", "l", "l"),  # Cyrillic palochka, lower case: l
    ("\u0455", "s", "s"),  # Cyrillic dze
    ("\u0440", "p", "p"),  # Cyrillic er
    ("\u03bf", "o", "o"),  # Greek omicron
    ("\u0397", "H", "h"),  # Greek capital eta
    ("\u03bd", "v", "v"),  # Greek nu
    ("\u0561", "w", "w"),  # Armenian ayb
    ("\u0585", "o", "o"),  # Armenian oh
    ("\u13aa", "A", "a"),  # Cherokee GO
    ("\ua4d0", "B", "b"),  # Lisu BA
    ("\u0261", "g", "g"),  # Latin script g
    ("\u0131", "i", "i"),  # dotless i
    ("\u2223", "|", "|"),  # DIVIDES: a symbol, so the bar
    ("\u2016", "||", "||"),
]


@pytest.mark.parametrize(("char", "cased", "folded"), SAMPLES, ids=[f"U+{ord(c):04X}" for c, _, _ in SAMPLES])
def test_confusables_fold_to_their_prototype_in_both_cases(char: str, cased: str, folded: str) -> None:
    assert normalize(char, casefold=False).text == cased
    assert normalize(char, casefold=True).text == folded


def test_ascii_is_never_folded_to_a_look_alike() -> None:
    # TR39 skeletons map m to rn, 0 to O, 1 and I to l: numbers and keys would all look alike.
    text = "m rn 0 O 1 I l | AKIA0123"
    assert normalize(text, casefold=False).text == text
    assert normalize(text, casefold=False).origin is None
    assert normalize(text).text == text.lower()


def test_tag_characters_are_decoded_and_flagged() -> None:
    result = normalize(f"hello {TAGGED}\U000e007f!")
    assert result.text == "hello project nightingale!"
    assert result.tags
    assert not normalize("hello").tags and not normalize("h\u00e9llo").tags
    # the span of a decoded phrase is the run of tag characters that spelled it
    start = result.text.index("project")
    assert result.span(start, start + len("project nightingale")) == (6, 6 + len(TAGGED))


@pytest.mark.parametrize(
    "pad",
    ["\u200b", "\u00ad", "\u034f", "\u2060", "\u180e", "\ufe0f", "\u3164", "\u115f", "\U0001bca0", "\U000e0100"],
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_default_ignorable_padding_is_removed(pad: str) -> None:
    assert normalize(pad.join("nightingale")).text == "nightingale"


def test_combining_marks_are_removed_after_decomposition() -> None:
    assert normalize("nig\u0301h\u0308ti\u0336n\u20ddgale").text == "nightingale"
    assert normalize("Ça façade à Zürich").text == "ca facade a zurich"
    assert normalize("\ufb01le \u2460 \u00b2").text == "file 1 2"


def test_decimal_digits_of_every_script_become_ascii() -> None:
    digits = [chr(cp) for cp in range(0x80, 0x110000) if unicodedata.category(chr(cp)) == "Nd"]
    folded = normalize("".join(digits)).text
    assert folded == "".join(str(unicodedata.decimal(d)) for d in digits)
    assert normalize("\u0664\u0665\u0666 \u096a\u096b \uff14").text == "456 45 4"


def test_other_scripts_keep_one_character_per_character() -> None:
    for text in ("\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u65e5\u672c\u8a9e", "Привет, мир"):
        result = normalize(text)
        assert len(result.text) == len(text) and result.origin is None
    assert normalize("\ud55c\uad6d\uc5b4").text == "\ud55c\uad6d\uc5b4"  # Hangul stays composed


def test_spans_map_back_to_the_original() -> None:
    text = "x\u200b\u200bé\ufb01 \U000e0041 ok"
    result = normalize(text)
    assert result.text == "xefi a ok"
    for start in range(len(result.text)):
        for end in range(start + 1, len(result.text) + 1):
            a, b = result.span(start, end)
            # the original span holds at least the normalised one (a ligature is cut whole)
            assert result.text[start:end] in normalize(text[a:b]).text


def test_normalising_twice_changes_nothing() -> None:
    rng = random.Random(7)
    cps = [cp for cp in rng.sample(range(0x80, 0x30000), 20000) if not 0xD800 <= cp <= 0xDFFF]
    for casefold in (False, True):
        once = normalize("".join(map(chr, cps)), casefold=casefold).text
        assert normalize(once, casefold=casefold).text == once


def test_regex_patterns_are_normalised_like_the_text() -> None:
    assert fold_pattern("caf\u00e9", casefold=True) == "cafe"
    assert fold_pattern("\\\u00c9t\u00e9", casefold=True) == "ete"
    assert fold_pattern("x\ufb01+", casefold=True) == "x(?:fi)+"
    with pytest.raises(ValueError, match="inside"):
        fold_pattern("[\ufb01]", casefold=True)
