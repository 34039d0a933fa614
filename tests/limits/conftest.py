"""The limits tests script the shared fake upstream's default reply: clear it after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluicegate.testing import FakeUpstream


@pytest.fixture(autouse=True)
def _default_reply_cleared(upstream_app: FakeUpstream) -> Iterator[None]:
    yield
    upstream_app.default = None
