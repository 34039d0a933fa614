"""Guard kinds: helpers to build a local guard from settings and to feed it normalised text."""

from __future__ import annotations

from collections.abc import Sequence

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Finding, Guard, GuardContext, guard_kinds
from sluicegate.guardrails.normalize import normalize
from sluicegate.vault import Vault


async def _no_complete(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
    raise AssertionError("a local guard asked a model")


def make(kind: str, **settings: object) -> Guard:
    """A guard of `kind`, its settings validated by the kind's `Settings` as the config loader does."""
    cls = guard_kinds()[kind].cls
    config = GuardConfig(name=f"test-{kind}", kind=kind, settings=settings)
    context = GuardContext(http=lambda: None, vault=Vault(), complete=_no_complete)
    return cls(config, cls.Settings.model_validate(config.settings), context)


def norm(guard: Guard, text: str) -> str:
    """`text` normalised as the framework does for `guard` (case folded unless the kind says not)."""
    return normalize(text, casefold=getattr(type(guard), "casefold", True)).text


def scan(guard: Guard, *texts: str) -> list[Finding]:
    """Findings of `guard` over normalised `texts`."""
    return guard.scan([norm(guard, t) for t in texts])


def labels(guard: Guard, *texts: str) -> list[str]:
    """The labels of `guard`'s findings over normalised `texts`, in order."""
    return [f.label for f in scan(guard, *texts)]


def matched(guard: Guard, text: str) -> list[str]:
    """The normalised substrings `guard` reports in `text` (for assertions on spans)."""
    normal = norm(guard, text)
    return [normal[f.start : f.end] for f in guard.scan([normal])]


def assert_no_text_in_labels(findings: Sequence[Finding], *secrets: str) -> None:
    """No label carries any of `secrets` (or a long piece of one)."""
    for f in findings:
        for secret in secrets:
            assert secret.lower() not in f.label.lower()
            assert len(f.label) < 40
