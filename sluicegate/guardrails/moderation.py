"""Guard kind `moderation`: a provider's moderation endpoint in the OpenAI `/v1/moderations` shape.

One POST per request (`{"model", "input": [texts]}`); each input the answer flags (in the chosen
categories, or at a score threshold) becomes one finding over its whole text, labelled
`moderation:<category>`. Any failure raises `GuardUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import Field, field_validator

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import (
    Finding,
    Guard,
    GuardContext,
    GuardSettings,
    GuardUnavailable,
    register_guard_kind,
    settings_as,
)
from sluicegate.guardrails.webhook import (
    DEFAULT_MAX_RESPONSE_BYTES,
    check_http_url,
    is_secret_ref,
    post_json,
    resolve_headers,
)
from sluicegate.vault import SECRET_SCHEMES

DEFAULT_URL = "https://api.openai.com/v1/moderations"
DEFAULT_MODEL = "omni-moderation-latest"


class ModerationSettings(GuardSettings):
    """Settings of a `moderation` guard."""

    #: the moderation endpoint (OpenAI's, or any service answering in its shape)
    url: str = DEFAULT_URL
    #: a secret reference (`env://OPENAI_API_KEY`, ...) sent as `Authorization: Bearer`; never the key itself
    api_key: str | None = None
    model: str = Field(DEFAULT_MODEL, min_length=1)
    #: the categories that count (`violence`, `hate/threatening`, ...); None: any category
    categories: list[str] | None = Field(None, min_length=1)
    #: count a category when its score is at least this, flagged or not; None: the service's own `categories` flags
    threshold: float | None = Field(None, ge=0, le=1)
    max_response_bytes: int = Field(DEFAULT_MAX_RESPONSE_BYTES, ge=1024, le=16 * 1024 * 1024)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_http_url(url)

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, api_key: str | None) -> str | None:
        if api_key is not None and not is_secret_ref(api_key):
            schemes = ", ".join(f"{s}://" for s in SECRET_SCHEMES)
            raise ValueError(f"must be a secret reference ({schemes}), never the key itself")
        return api_key


class ModerationGuard(Guard):
    """Reports the inputs a moderation endpoint flags, one finding per flagged text."""

    Settings = ModerationSettings
    remote = True

    def __init__(self, config: GuardConfig, settings: GuardSettings, context: GuardContext) -> None:
        super().__init__(config, settings, context)
        self.settings = settings = settings_as(settings, ModerationSettings)
        self._categories = frozenset(settings.categories) if settings.categories is not None else None

    async def ascan(self, texts: Sequence[str]) -> list[Finding]:
        """Moderate every non-empty text in one call; `GuardUnavailable` on any failure."""
        # Empty texts cannot be flagged and some endpoints refuse them: they are not sent.
        sent = [i for i, text in enumerate(texts) if text.strip()]
        if not sent:
            return []
        try:
            async with asyncio.timeout(self.config.timeout_s):
                headers = {}
                if self.settings.api_key is not None:
                    key = await resolve_headers(self.name, {"Authorization": self.settings.api_key}, self.context.vault)
                    headers["Authorization"] = "Bearer " + key["Authorization"]
                answer = await post_json(
                    self.name,
                    self.context,
                    self.settings.url,
                    {"model": self.settings.model, "input": [texts[i] for i in sent]},
                    headers,
                    timeout_s=self.config.timeout_s,
                    max_response_bytes=self.settings.max_response_bytes,
                )
        except TimeoutError:
            raise GuardUnavailable(f"guard {self.name!r}: no answer within {self.config.timeout_s:g} s") from None
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(sent):
            raise GuardUnavailable(f"guard {self.name!r}: the answer has no result per input")
        findings = []
        for index, result in zip(sent, results, strict=True):
            hit = self._verdict(result)
            if hit is not None:
                category, score = hit
                findings.append(Finding(index, 0, len(texts[index]), f"moderation:{category}", score))
        return findings

    def _verdict(self, result: object) -> tuple[str, float | None] | None:
        """The counting category with the highest score (and that score), or None when the input passes."""
        if not isinstance(result, dict):
            raise GuardUnavailable(f"guard {self.name!r}: a result is not an object")
        flagged, flags, scores = result.get("flagged"), result.get("categories"), result.get("category_scores")
        if not isinstance(flagged, bool) or not isinstance(flags, dict) or not isinstance(scores, dict):
            raise GuardUnavailable(f"guard {self.name!r}: a result lacks flagged, categories or category_scores")
        # Scores may be null for a category a model does not score; such a category only counts by its flag.
        numeric = {
            str(c): float(s) for c, s in scores.items() if isinstance(s, int | float) and not isinstance(s, bool)
        }
        threshold = self.settings.threshold
        if threshold is None:
            if not flagged:
                return None
            counting = [str(c) for c, on in flags.items() if on is True]
            if not counting and self._categories is None:
                return "flagged", None  # flagged under no category it names: still flagged
        else:
            counting = [c for c, s in numeric.items() if s >= threshold]
        if self._categories is not None:
            counting = [c for c in counting if c in self._categories]
        if not counting:
            return None
        best = max(counting, key=lambda c: numeric.get(c, -1.0))
        return best, numeric.get(best)


register_guard_kind("moderation", ModerationGuard)

__all__ = ["ModerationGuard", "ModerationSettings"]
