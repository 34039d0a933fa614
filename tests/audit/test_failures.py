"""Failed authentications: audited one by one up to a bound per source, then summarised."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from sluicegate.audit.failures import AuthFailureAggregator
from sluicegate.testing import FakeUpstream
from tests.conftest import run_gateway, wait_for


def test_aggregator_bounds_per_source_and_summarises() -> None:
    agg = AuthFailureAggregator(window_s=60, free_per_window=2, max_sources=3)
    assert [agg.admit("1.1.1.1", now=0) for _ in range(5)] == [True, True, False, False, False]
    assert agg.admit("2.2.2.2", now=1)
    assert agg.due(now=30) == []  # windows still open
    summaries = agg.due(now=61)
    assert [(e.client_ip, e.total_tokens, e.outcome) for e in summaries] == [("1.1.1.1", 3, "auth_failures_aggregated")]
    # a fresh window after the summary
    assert agg.admit("1.1.1.1", now=62)


def test_many_sources_share_one_bucket_past_the_bound() -> None:
    agg = AuthFailureAggregator(window_s=60, free_per_window=1, max_sources=2)
    assert agg.admit("a", now=0) and agg.admit("b", now=0)
    assert agg.admit("c", now=0)  # first in the overflow bucket
    assert not agg.admit("d", now=0)
    assert [e.client_ip for e in agg.due(now=0, all_=True)] == [None]


def test_a_flood_of_bad_keys_leaves_a_bounded_audit(tmp_path: Path, upstream: FakeUpstream, upstream_url: str) -> None:
    extra = "audit:\n  auth_failures_per_window: 3\n  auth_failure_window_s: 0.3\n"
    with run_gateway(tmp_path, upstream_url, extra) as gw:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(base_url=gw.url, headers={"Authorization": "Bearer sg-guess"}) as c:
            for _ in range(25):
                assert c.post("/v1/chat/completions", json=body).status_code == 401
        time.sleep(0.35)
        with gw.client() as c:  # the next call closes the window
            assert c.post("/v1/chat/completions", json=body).status_code == 200
        wait_for(lambda: any(e["outcome"] == "auth_failures_aggregated" for e in gw.audit()))
        events = gw.audit()
    individual = [e for e in events if e["status"] == 401 and e["endpoint"] == "chat"]
    summaries = [e for e in events if e["outcome"] == "auth_failures_aggregated"]
    assert len(individual) == 3
    assert len(summaries) == 1 and summaries[0]["total_tokens"] == 22 and summaries[0]["client_ip"] == "127.0.0.1"
    assert "sg-guess" not in str(events)
