"""Audit rows: every value bounded to its column, one at a time, and good rows kept as they are."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sluicegate.audit.events import FIELDS
from sluicegate.audit.rows import INT32, INT64, MAX_TEXT_CHARS, row_as_dict, row_from_dict, row_of
from tests.audit.test_writer import event


def test_a_good_row_is_kept_as_it_is() -> None:
    good = event(1)
    good.reason = "refusé: « données » ✓"  # text beyond ASCII that UTF-8 holds
    good.guards = '[{"guard": "pii"}]'
    row = row_of(good)
    assert row == tuple(getattr(good, name) for name in FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("prompt_tokens", INT32 + 1, INT32),
        ("prompt_tokens", -(2**40), -INT32 - 1),
        ("prompt_tokens", True, 1),
        ("prompt_tokens", 3.9, 3),
        ("prompt_tokens", "12", None),
        ("status", None, 0),
        ("cost_micro_usd", 2**70, INT64),
        ("cost_micro_usd", INT64, INT64),
        ("latency_ms", float("nan"), 0.0),
        ("latency_ms", float("inf"), 0.0),
        ("latency_ms", 7, 7.0),
        ("ttft_ms", float("-inf"), None),
        ("stream", None, False),
        ("stream", 1, True),
        ("model_requested", "m" * 201, "m" * 200),
        ("model_requested", "m" * 200, "m" * 200),
        ("usage_source", "x" * 17, "x" * 16),
        ("consumer", "a\0b", "ab"),
        ("consumer", "a\ud800b", "a?b"),
        ("consumer", 5, None),
        ("endpoint", None, ""),
        ("reason", "r" * (MAX_TEXT_CHARS + 5), "r" * MAX_TEXT_CHARS),
    ],
)
def test_each_value_is_bounded_to_its_column(field: str, value: Any, stored: Any) -> None:
    bad = dataclasses.replace(event(1))
    setattr(bad, field, value)
    row = row_as_dict(row_of(bad))
    assert row[field] == stored and type(row[field]) is type(stored)
    others = {name: v for name, v in row.items() if name != field}
    assert others == {name: getattr(event(1), name) for name in others if name != "ts"} | {"ts": row["ts"]}


def test_a_row_read_back_is_bounded_and_missing_fields_are_null() -> None:
    row = row_as_dict(row_from_dict({"request_id": "r1", "prompt_tokens": 2**33, "status": 200}))
    assert row["request_id"] == "r1" and row["prompt_tokens"] == INT32 and row["status"] == 200
    assert row["consumer"] is None and row["endpoint"] == "" and row["stream"] is False
