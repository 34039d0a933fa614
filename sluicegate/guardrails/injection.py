"""Guard kind `prompt_injection`: heuristic rules, plus a small local classifier where installed.

Each rule has a label and a weight; a text's rules combine as independent evidence
(1 - prod(1 - weight)), and when that reaches `heuristic_threshold` each matching rule is a
finding. The classifier is the TF-IDF + logistic regression model that the `prompt-guardrail`
package ships (module `guardify`, no download at run time); its finding covers the whole text.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Finding, Guard, GuardContext, GuardSettings, register_guard_kind, settings_as
from sluicegate.guardrails.regex import pattern_width

log = logging.getLogger(__name__)

_STOP = r"[^.!?\n]"  # within one sentence
#: label -> (weight, pattern on normalised, case-folded text)
RULES: dict[str, tuple[float, str]] = {
    "ignore_instructions": (
        0.9,
        rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\b{_STOP}{{0,40}}?"
        rf"\b(?:previous|prior|above|earlier|preceding|all|any|your|the|my|these|those|system)\b{_STOP}{{0,24}}?"
        r"\b(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints|context|orders)\b",
    ),
    "reveal_system_prompt": (
        0.8,
        rf"\b(?:reveal|show|print|display|repeat|output|leak|dump|tell me|give me|write out|what (?:is|are|was|were))\b"
        rf"{_STOP}{{0,40}}?\b(?:system|initial|hidden|secret|original|developer|internal|pre-?prompt)\s{{1,4}}"
        r"(?:prompt|instructions?|message|rules|configuration)",
    ),
    "do_anything_now": (0.9, r"\bdo anything now\b|\byou are (?:now )?dan\b|\bdan mode\b"),
    "privileged_mode": (
        0.7,
        r"\b(?:developer|god|debug|admin|sudo|unrestricted|jailbreak|jailbroken|evil) mode\b"
        r"(?:\s{1,4}(?:is\s{1,4})?(?:enabled|activated|on))?",
    ),
    "jailbreak_word": (0.4, r"\bjail-?break(?:ed|ing|s)?\b"),
    "you_are_now": (0.5, r"\byou are now\b|\bfrom now on,?\s{1,4}you\s{1,4}(?:are|will|must|shall|have to)\b"),
    "roleplay_override": (
        0.6,
        rf"\b(?:pretend|imagine|act as if|act like|roleplay|role-play|play the role)\b{_STOP}{{0,60}}?"
        r"\b(?:unrestricted|unfiltered|uncensored|amoral|no (?:rules|limits|restrictions|filters|ethics)|"
        r"(?:without|free (?:of|from)) (?:any )?(?:rules|limits|restrictions|filters|ethics|guidelines))\b",
    ),
    "no_restrictions": (
        0.5,
        r"\b(?:without|no|free (?:of|from)|not bound by|unbound by)\s{1,4}(?:any\s{1,4})?(?:restrictions|limitations|"
        r"filters|censorship|ethical (?:guidelines|constraints)|content polic(?:y|ies)|safety (?:guidelines|rules))\b",
    ),
    "disable_safety": (
        0.7,
        rf"\b(?:disable|turn off|deactivate|bypass|circumvent|override)\b{_STOP}{{0,20}}?"
        r"\b(?:safety|content|moderation|security|ethical)\s{1,4}(?:filters?|guardrails?|safeguards?|restrictions|"
        r"protocols?|checks|guidelines)\b",
    ),
    "new_instructions": (
        0.6,
        r"\b(?:new|updated|real|actual|revised|secret)\s{1,4}(?:instructions?|rules|system prompt)\s{0,4}:"
        r"|\byour (?:new|real|true|actual) (?:instructions|purpose|task|goal|role) (?:is|are)\b",
    ),
    # chat-template tokens and fake role headers, which try to end the user's turn
    "delimiter_injection": (
        0.7,
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|begin_of_text|start_header_id|eot_id)\|>"
        r"|\[/?inst\]|<</?sys>>|\[/?system\]|</?system>",
    ),
    "fake_role_header": (0.5, r"(?m)^\s{0,4}#{0,3}\s{0,4}(?:system|developer)\s{0,4}(?:message|prompt)?\s{0,4}:"),
}
#: the package (and its module) that ships the classifier
CLASSIFIER_PACKAGE = "prompt-guardrail"
CLASSIFIER_MODULE = "guardify"


class InjectionSettings(GuardSettings):
    """Settings of a `prompt_injection` guard."""

    #: the classifier's least probability of injection for a finding (when the classifier runs)
    threshold: float = Field(0.9, ge=0, le=1)
    #: the rules' least combined weight for their findings
    heuristic_threshold: float = Field(0.6, gt=0, le=1)
    #: run the classifier when its package is installed; off: heuristics only
    use_classifier: bool = True
    #: labels of rules not to run
    disabled_rules: list[str] = Field(default_factory=list)

    @field_validator("disabled_rules")
    @classmethod
    def _known(cls, labels: list[str]) -> list[str]:
        unknown = sorted(set(labels) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; the rules are {sorted(RULES)}")
        return labels


class InjectionGuard(Guard):
    """Scores texts for prompt injection by rules and, where installed, a classifier."""

    Settings = InjectionSettings

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, InjectionSettings)
        self._rules = [
            (label, weight, re.compile(pattern, re.IGNORECASE))
            for label, (weight, pattern) in RULES.items()
            if label not in settings.disabled_rules
        ]
        self._classify = load_classifier() if settings.use_classifier else None
        if settings.use_classifier and self._classify is None:
            log.warning(
                "guard %r: heuristic rules only: the classifier package %r is not installed",
                self.name,
                CLASSIFIER_PACKAGE,
            )
        elif self._classify is not None:
            log.info("guard %r: heuristic rules and the %r classifier", self.name, CLASSIFIER_PACKAGE)
        widths = [pattern_width(p.pattern) for _, _, p in self._rules]
        self._reach = None if self._classify or None in widths else max((w or 0 for w in widths), default=0)

    @property
    def reach(self) -> int | None:
        """The widest rule; None with the classifier, which reads the whole text."""
        return self._reach

    def scan(self, texts: Sequence[str]) -> list[Finding]:
        """Findings across the texts, each with its score (a rule's weight, the classifier's probability)."""
        return [
            Finding(i, start, end, label, score)
            for i, text in enumerate(texts)
            for start, end, label, score in self.score(text)
        ]

    def scan_text(self, text: str) -> list[tuple[int, int, str]]:
        """Rule matches when their combined weight is enough, and the classifier's verdict."""
        return [(start, end, label) for start, end, label, _ in self.score(text)]

    def score(self, text: str) -> list[tuple[int, int, str, float]]:
        """Findings in one text as (start, end, label, score)."""
        found: list[tuple[int, int, str, float]] = []
        for label, weight, pattern in self._rules:
            found.extend((m.start(), m.end(), label, weight) for m in pattern.finditer(text) if m.end() > m.start())
        if found:
            weights = {label: weight for _, _, label, weight in found}
            if 1 - math.prod(1 - w for w in weights.values()) < self.settings.heuristic_threshold:
                found = []
        if self._classify is not None and text.strip():
            probability = self._classify(text)
            if probability >= self.settings.threshold:
                found.append((0, len(text), "classifier", probability))
        found.sort()
        return found


def classifier_available() -> bool:
    """True when the `prompt-guardrail` package is installed."""
    return importlib.util.find_spec(CLASSIFIER_MODULE) is not None


def load_classifier() -> Callable[[str], float] | None:
    """The packaged classifier as text -> probability of injection, or None when not installed."""
    if not classifier_available():
        return None
    model = _packaged_model()

    def classify(text: str) -> float:
        verdict = model.predict(text)
        score = verdict["score"]  # the probability of the label it chose
        if not isinstance(score, float):
            return 0.0
        return score if verdict["label"] == "injection" else 1.0 - score

    return classify


@functools.lru_cache(maxsize=1)
def _packaged_model() -> _Model:
    # Loaded once per process (about a second): every prompt_injection guard shares it.
    module = importlib.import_module(f"{CLASSIFIER_MODULE}.guardrails.logistic_regression")
    with warnings.catch_warnings():
        # The model was pickled by an older scikit-learn, which warns on load; the suite runs with
        # warnings as errors.
        warnings.simplefilter("ignore")
        model: _Model = module.LogisticRegressionGuardrail()
    return model


class _Model(Protocol):
    def predict(self, text: str) -> dict[str, object]: ...


register_guard_kind("prompt_injection", InjectionGuard)

__all__ = ["RULES", "InjectionGuard", "InjectionSettings", "classifier_available", "load_classifier"]
