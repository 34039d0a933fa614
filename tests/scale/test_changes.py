"""Key changes reach instances through Redis pub/sub (`store.changes`), not only by their poll.

The gateway here polls the keys' version once a minute, so a revocation refused within a fraction
of a second can only have come by the notification `sluicegate keys revoke` published. Redis
restarted: the listener subscribes again and catches up with what it missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream
from tests.conftest import RunningGateway, assert_openai_error, run_gateway, wait_for
from tests.limits.test_limits_e2e import fixed
from tests.redis_server import RedisServer
from tests.scale.cluster import CHAT, body

#: the gateway's own poll of the keys: too slow to explain what the tests see
POLL_S = 60.0


def cli(gw: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(gw.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "sluicegate.cli", *args, "--config", str(gw.config_path)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def first_refusal(gw: RunningGateway, key: str, limit_s: float) -> float | None:
    """Seconds until a call with `key` is refused with 401 (None: not within `limit_s`)."""
    start = time.monotonic()
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
        while time.monotonic() - start < limit_s:
            resp = client.post(CHAT, json=body())
            if resp.status_code == 401:
                assert_openai_error(resp, 401, "api_key_revoked")
                return time.monotonic() - start
            assert resp.status_code == 200, resp.text
            time.sleep(0.01)
    return None


def limits_redis(redis: RedisServer) -> str:
    return f"""\
limits:
  backend: redis
  redis: {{url: "{redis.url}", key_prefix: "{uuid.uuid4().hex}", timeout_s: 2}}
"""


def test_a_revocation_is_heard_at_once_and_after_redis_restarts(
    tmp_path: Path, upstream: FakeUpstream, upstream_url: str, redis_server: RedisServer
) -> None:
    fixed(upstream)
    with run_gateway(tmp_path, upstream_url, limits_redis(redis_server), key_refresh_s=POLL_S) as gw:
        listener = gw.app.changes
        assert listener is not None
        wait_for(lambda: listener.subscriptions == 1, timeout=5)
        store = KeyStore(create_engine(f"sqlite:///{gw.data_dir / 'sluicegate.db'}"))

        before = {r.id for r in store.list("alice")}
        made = cli(gw, "keys", "create", "--consumer", "alice")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        [record] = [r for r in store.list("alice") if r.id not in before]
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
            assert client.post(CHAT, json=body()).status_code == 200  # in the gateway's index now
        revoked = cli(gw, "keys", "revoke", record.id)
        assert revoked.returncode == 0, revoked.stderr
        delay = first_refusal(gw, key, 5.0)
        assert delay is not None and delay < 1.0, delay
        assert listener.heard >= 2  # the creation and the revocation

        # Redis away: a revocation still happens in the store, and the CLI says how it will spread.
        other, other_record = store.create("alice")
        with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {other}"}, timeout=5) as client:
            assert client.post(CHAT, json=body()).status_code == 200
        redis_server.stop()
        try:
            revoked = cli(gw, "keys", "revoke", other_record.id)
            assert revoked.returncode == 0, revoked.stderr
            assert "poll" in revoked.stderr
            assert "Traceback" not in revoked.stderr
        finally:
            redis_server.start()
        # Subscribed again, the listener reloads what changed while it was away.
        delay = first_refusal(gw, other, 15.0)
        assert delay is not None, "the revocation made while Redis was away never reached the gateway"
        assert listener.subscriptions >= 2
