"""The labelled corpus: everyday developer and business text passes the default guards, every
detector catches its samples (obfuscated variants included), and the precision and recall table
in docs/guardrails-accuracy.md is what this corpus gives.

Regenerate the table after a detector changes: `UPDATE_ACCURACY=1 pytest tests/guardrails/test_corpus.py`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import string
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Guard, GuardContext
from sluicegate.guardrails.engine import CallGuards, GuardSet, build_guard, run_guards
from sluicegate.guardrails.normalize import tables
from sluicegate.guardrails.pii import ENTITIES, NER_ENTITIES
from sluicegate.guardrails.secrets import DETECTORS
from sluicegate.vault import Vault

CORPUS = Path(__file__).parent / "corpus"
DOC = Path(__file__).resolve().parents[2] / "docs" / "guardrails-accuracy.md"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

#: the guards, with their default settings apart from the lists a regex or words guard needs
GUARDS = {
    "pii": {},
    "secrets": {},
    "regex": {"deny": [r"project\s+nightingale"]},
    "words": {"words": ["operation bluebird"]},
}
#: labels as the docs name them
KINDS = {"deny[0]": "regex (a deny pattern)", "words[0]": "words (a phrase)"}


@dataclass(frozen=True)
class Sample:
    id: str
    label: str  # a detector's label, or PASS
    text: str


def load(path: Path, label: str | None = None) -> list[Sample]:
    """Samples of a corpus file: `=== id` (pass files) or `=== LABEL id` headers."""
    rng = random.Random(path.name)
    samples: list[Sample] = []
    for chunk in re.split(r"^=== ", path.read_text("utf-8"), flags=re.M)[1:]:
        head, _, body = chunk.partition("\n")
        if label is None:
            lab, _, sid = head.partition(" ")
        else:
            lab, sid = label, head
        samples.append(Sample(sid.strip(), lab, fill(body.rstrip("\n"), rng)))
    return samples


_ALPHABETS = {
    "alnum": string.ascii_letters + string.digits,
    "upper": string.ascii_uppercase + string.digits,
    "digits": string.digits,
    "hex": "0123456789abcdef",
    "b64": string.ascii_letters + string.digits + "+/",
    "b64url": string.ascii_letters + string.digits + "-_",
}


def fill(text: str, rng: random.Random) -> str:
    """Key-shaped templates (`{alnum:40}`) filled from a seeded generator."""

    def one(m: re.Match[str]) -> str:
        return "".join(rng.choice(_ALPHABETS[m.group(1)]) for _ in range(int(m.group(2))))

    return re.sub(r"\{(alnum|upper|digits|hex|b64|b64url):(\d+)\}", one, text)


# ------------------------------------------------------------------------------ obfuscations


def _lookalikes() -> dict[str, list[str]]:
    """For each ASCII letter, characters of other scripts that fold to it (case kept)."""
    out: dict[str, list[str]] = {}
    for char, proto in tables().cased.items():
        if len(proto) == 1 and proto.isascii() and proto.isalpha() and 0x370 <= ord(char) < 0x1400:
            out.setdefault(proto, []).append(char)
    return out


LOOKALIKES = _lookalikes()
DIGIT_SCRIPTS = [0x0660, 0x0966, 0x09E6, 0xFF10, 0x0E50, 0x1040]  # Arabic-Indic, Devanagari, Bengali, ...


def confusables(text: str, n: int) -> str:
    """Every other letter that has a look-alike in Cyrillic, Greek, Armenian ... swapped for it."""
    out = []
    for i, c in enumerate(text):
        choices = LOOKALIKES.get(c)
        out.append(choices[(i + n) % len(choices)] if choices and i % 2 == 0 else c)
    return "".join(out)


def other_digits(text: str, n: int) -> str:
    zero = DIGIT_SCRIPTS[n % len(DIGIT_SCRIPTS)]
    return "".join(chr(zero + int(c)) if c.isascii() and c.isdigit() else c for c in text)


def zero_width(text: str, n: int) -> str:
    pads = ["\u200b", "\u200d", "\u00ad", "\u2060", "\ufe0f", "\u034f", "\u180e", "\U000e0101"]
    return "".join(c + (pads[(i + n) % len(pads)] if c.isalnum() and i % 2 else "") for i, c in enumerate(text))


def combining(text: str, n: int) -> str:
    marks = ["\u0301", "\u0308", "\u0336", "\u0323", "\u20dd", "\u0489"]
    return "".join(c + (marks[(i + n) % len(marks)] if c.isalnum() and i % 3 == 0 else "") for i, c in enumerate(text))


def tags(text: str, n: int) -> str:
    return "".join(chr(0xE0000 + ord(c)) if 0x20 <= ord(c) <= 0x7E else c for c in text)


def b64(text: str, n: int) -> str:
    return "decode and follow: " + base64.b64encode(text.encode()).decode()


def percent(text: str, n: int) -> str:
    return urllib.parse.quote(text, safe="")


def entities(text: str, n: int) -> str:
    return "".join(f"&#{ord(c)};" if c not in "\n" else c for c in text)


OBFUSCATIONS: dict[str, Callable[[str, int], str]] = {
    "confusables": confusables,
    "other-digits": other_digits,
    "zero-width": zero_width,
    "combining": combining,
    "tags": tags,
    "base64": b64,
    "percent": percent,
    "html": entities,
}


def block_samples() -> list[Sample]:
    base = load(CORPUS / "block.txt")
    out = list(base)
    for n, sample in enumerate(base):
        for name, obfuscate in OBFUSCATIONS.items():
            text = obfuscate(sample.text, n)
            if text != sample.text:
                out.append(Sample(f"{sample.id}~{name}", sample.label, text))
    return out


def pass_samples() -> list[Sample]:
    return [s for path in sorted((CORPUS / "pass").glob("*.txt")) for s in load(path, "PASS")]


# ------------------------------------------------------------------------------ running


def guards() -> list[Guard]:
    async def no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        raise AssertionError("no model here")

    context = GuardContext(http=lambda: None, vault=Vault(), complete=no_model)
    return [
        build_guard(GuardConfig(name=kind, kind=kind, action="flag", settings=settings), context)
        for kind, settings in GUARDS.items()
    ]


def found_labels(all_guards: list[Guard], text: str) -> set[str]:
    state = CallGuards(GuardSet(tuple(all_guards), (), 0))
    hits, _ = asyncio.run(run_guards(state, all_guards, [text], "input"))
    return {finding.label.split(":")[0] for _, finding in hits}


@pytest.fixture(scope="module")
def results() -> list[tuple[Sample, set[str]]]:
    all_guards = guards()
    return [(s, found_labels(all_guards, s.text)) for s in (*pass_samples(), *block_samples())]


def test_the_corpus_is_a_few_hundred_samples() -> None:
    passing, blocking = pass_samples(), block_samples()
    assert len(passing) >= 200 and len(blocking) >= 300
    labels = Counter(s.label for s in blocking)
    every = {*(e for e in ENTITIES if e not in NER_ENTITIES), *DETECTORS, "deny[0]", "words[0]"}
    assert set(labels) == every and min(labels.values()) >= 9  # every detector, with its variants


def test_everyday_text_passes(results: list[tuple[Sample, set[str]]]) -> None:
    wrong = {s.id: sorted(found) for s, found in results if s.label == "PASS" and found}
    assert wrong == {}


def test_every_block_sample_is_caught_by_its_detector(results: list[tuple[Sample, set[str]]]) -> None:
    missed = {s.id: sorted(found) for s, found in results if s.label != "PASS" and s.label not in found}
    assert missed == {}


def test_the_docs_show_this_corpus_figures(results: list[tuple[Sample, set[str]]]) -> None:
    limits = load(CORPUS / "limits.txt")
    all_guards = guards()
    table = accuracy_table([*results, *((s, found_labels(all_guards, s.text)) for s in limits)])
    doc = DOC.read_text("utf-8")
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    expected = f"{head}{BEGIN}\n{table}{END}{tail}"
    if os.environ.get("UPDATE_ACCURACY"):
        DOC.write_text(expected, "utf-8")
    assert doc == expected, "out of date: UPDATE_ACCURACY=1 pytest tests/guardrails/test_corpus.py"


def accuracy_table(results: list[tuple[Sample, set[str]]]) -> str:
    """Per detector: texts it should catch, caught, false alarms, precision, recall."""
    present = {s.label for s, _ in results if s.label != "PASS"}
    labels = [label for label in (*ENTITIES, *DETECTORS, *KINDS) if label in present]
    lines = [
        f"Corpus: {sum(s.label == 'PASS' for s, _ in results)} texts that must pass, "
        f"{sum(s.label != 'PASS' for s, _ in results)} that must be caught (obfuscated variants included).",
        "",
        "| detector | should catch | caught | false alarms | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        positives = [found for s, found in results if s.label == label]
        tp = sum(label in found for found in positives)
        # A false alarm is a text that must pass and is flagged; a second label on a text that
        # holds a real secret (a key both named and random-looking) is not one.
        fp = sum(label in found for s, found in results if s.label == "PASS")
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / len(positives) if positives else 1.0
        name = KINDS.get(label, f"`{label}`")
        lines.append(f"| {name} | {len(positives)} | {tp} | {fp} | {precision:.3f} | {recall:.3f} |")
    return "\n".join(lines) + "\n"
