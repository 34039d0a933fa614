"""Write sluicegate/guardrails/data/unicode_fold.txt: the data the guards' text normalisation reads.

A development tool, not a runtime dependency: it needs ICU's Python binding (`pip install --group
gen-data -e .`, which brings `icukit-pyicu`, ICU with its Unicode data bundled) and runs
offline. It writes

- `[ignorable]`: every Default_Ignorable_Code_Point (the normaliser removes them), as ranges;
- `[fold]`: per character, its confusables prototype (Unicode TR39 skeleton, from ICU's
  `SpoofChecker`) with case kept and with case folded.

Prototypes are chosen for matching, not for spoof detection: ASCII itself is never folded (TR39 maps
`m` to `rn`, `0` to `O`, `1` and `I` to `l`, which would make numbers and keys look alike), and a
character whose skeleton is such an ASCII class maps to the member of the class that fits it (an
upper-case letter to `I`, a lower-case letter to `l`, a symbol to `|`). Every value is a fixed
point of the runtime fold, so normalising twice changes nothing.

Usage: python scripts/gen_unicode_tables.py [--check]
"""

from __future__ import annotations

import argparse
import string
import sys
import unicodedata
from pathlib import Path

import icu  # type: ignore[import-not-found]

from sluicegate.guardrails.normalize import DATA_FILE, FoldTables, decompose, fold_char

OUT = Path(__file__).resolve().parent.parent / "sluicegate" / "guardrails" / "data" / DATA_FILE
ASCII = [chr(c) for c in range(0x20, 0x7F)]
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
_SPOOF = icu.SpoofChecker()


def skeleton(text: str) -> str:
    return str(_SPOOF.getSkeleton(0, text))


def is_ignorable(cp: int) -> bool:
    return bool(icu.Char.hasBinaryProperty(cp, icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT))


def ranges(cps: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def preference(ch: str) -> list[str]:
    """ASCII classes in the order a prototype for `ch` prefers them, by `ch`'s own category."""
    upper, lower, digits = string.ascii_uppercase, string.ascii_lowercase, string.digits
    other = "".join(c for c in ASCII if not c.isalnum())
    category = unicodedata.category(ch)
    if category in ("Lu", "Lt"):
        return [upper, lower, digits, other]
    if category.startswith("L"):
        return [lower, upper, digits, other]
    if category.startswith("N"):
        return [digits, upper, lower, other]
    return [other, lower, upper, digits]


def pick(candidates: list[str], ch: str) -> str:
    for group in preference(ch):
        for c in candidates:
            if c in group:
                return c
    return candidates[0]


def prototype(ch: str, by_skeleton: dict[str, list[str]]) -> str:
    """`ch`'s TR39 prototype, with ASCII skeleton classes resolved to the member that fits `ch`."""
    sk = skeleton(ch)
    if sk == unicodedata.normalize("NFD", ch):
        return ch
    if sk in by_skeleton:  # one ASCII character has this skeleton (`rn` is `m`)
        return pick(by_skeleton[sk], ch)
    return "".join(pick(by_skeleton[c], ch) if c in by_skeleton else c for c in sk)


def settle(mapping: dict[str, str], step: object) -> None:
    """Apply the runtime fold to every value until none changes (each value a fixed point)."""
    assert callable(step)
    for _ in range(8):
        changed = False
        for key, value in mapping.items():
            new = "".join(step(c) for c in value)
            if new != value:
                mapping[key] = new
                changed = True
        if not changed:
            return
    raise SystemExit("the fold does not settle: check the prototypes")


def build() -> str:
    cps = [cp for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    ignorable = [cp for cp in cps if is_ignorable(cp)]
    ignorable_set = frozenset(ignorable)
    by_skeleton: dict[str, list[str]] = {}
    for a in ASCII:
        by_skeleton.setdefault(skeleton(a), []).append(a)
    # Keys: characters the runtime looks up, i.e. what survives decomposition unchanged. Hangul
    # syllables stay whole: TR39 spells them as look-alike jamo and CJK strokes, which no Latin
    # rule can be evaded with, and which would take 11,000 lines to say.
    keys = [
        chr(cp)
        for cp in cps
        if icu.Char.charType(cp) != icu.UCharCategory.UNASSIGNED
        and not HANGUL_FIRST <= cp <= HANGUL_LAST
        and decompose(chr(cp), ignorable_set) == chr(cp)
    ]
    cased = {ch: prototype(ch, by_skeleton) for ch in keys}
    cased = {ch: "".join(decompose(c, ignorable_set) for c in v) for ch, v in cased.items()}
    data = FoldTables(ignorable_set, cased, {}, {})
    settle(cased, lambda c: fold_char(c, False, data))
    # Case folded: the prototype of the character as written (Cyrillic capital ve looks like `B`: `b`),
    # then case folded, then settled under the folded table itself.
    folded = {ch: "".join(fold_char(c, True, FoldTables(ignorable_set, {}, {}, {})) for c in cased[ch]) for ch in keys}
    folded_data = FoldTables(ignorable_set, cased, folded, {})
    settle(folded, lambda c: fold_char(c, True, folded_data))
    lines = [
        "# Unicode data for sluicegate.guardrails.normalize; generated by scripts/gen_unicode_tables.py, do not edit.",
        f"# version icu = {icu.ICU_VERSION}",
        f"# version unicode = {icu.UNICODE_VERSION}",
        f"# version unicodedata = {unicodedata.unidata_version}",
        "#",
        "# [ignorable]: Default_Ignorable_Code_Point, hex code points or FIRST..LAST ranges.",
        "# [fold]: CHAR;CASED;FOLDED - the TR39 prototype with case kept, and with case folded, as hex",
        "# code points; `=` means the character itself (CASED) or its str.casefold() (FOLDED).",
        "[ignorable]",
    ]
    lines += [f"{a:04X}" if a == b else f"{a:04X}..{b:04X}" for a, b in ranges(ignorable)]
    lines.append("[fold]")
    for ch in keys:
        c, f = cased[ch], folded[ch]
        if c == ch and f == ch.casefold():
            continue
        c_out = "=" if c == ch else " ".join(f"{ord(x):04X}" for x in c)
        f_out = "=" if f == ch.casefold() else " ".join(f"{ord(x):04X}" for x in f)
        lines.append(f"{ord(ch):04X};{c_out};{f_out}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the checked-in file differs")
    args = parser.parse_args()
    text = build()
    if args.check:
        same = OUT.exists() and OUT.read_text("utf-8") == text
        print("up to date" if same else f"{OUT} differs from what ICU {icu.ICU_VERSION} gives")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, "utf-8")
    print(f"wrote {OUT} ({len(text.splitlines())} lines, ICU {icu.ICU_VERSION}, Unicode {icu.UNICODE_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
