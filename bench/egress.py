"""What interception through the egress proxy adds to a call: the same chat completion sent to
the gateway's data port and, through the proxy, to `https://api.openai.com` (intercepted).

Starts the fake upstream in this process and `sluicegate serve` (one worker) with an egress proxy
that intercepts `api.openai.com` with a CA made here, creates a key, then sends `--calls`
sequential non-streamed chat completions each way, on one kept-alive connection and on a new
connection per call (for the proxy: a new `CONNECT` and TLS handshake each), and times the first
intercepted call (which issues the host's leaf certificate). Prints the percentiles in ms. The
client runs on the same machine: compare the two columns, not the absolute figures.

    .venv/bin/python bench/egress.py [--calls 300] [--out bench/results/egress.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from sluicegate.settings import Settings
from sluicegate.store.db import create_engine
from sluicegate.store.keys import KeyStore
from sluicegate.testing import FakeUpstream, serve_in_thread
from sluicegate.testing.ca import make_ca

UPSTREAM_KEY = "sk-bench-upstream"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "echo: hello"}]}
CONFIG = """\
providers:
  - {{name: mock, type: openai_compatible, base_url: "{upstream}/v1", api_key: env://BENCH_UPSTREAM_KEY}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
consumers:
  - {{name: bench, models: ["*"]}}
egress:
  enabled: true
  port: {proxy_port}
  source_networks: [127.0.0.0/8]
  intercept: [api.openai.com]
  ca: {{cert: "file://{cert}", key: "file://{key}"}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(make_client: Callable[[], httpx.Client], url: str, key: str, calls: int, reuse: bool) -> list[float]:
    """Milliseconds per call, on one client (`reuse`) or a new one per call."""
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    client = make_client() if reuse else None
    try:
        for _ in range(calls):
            one = client or make_client()
            start = time.perf_counter()
            one.post(url, json=BODY, headers=headers).raise_for_status()
            out.append((time.perf_counter() - start) * 1000)
            if client is None:
                one.close()
    finally:
        if client is not None:
            client.close()
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(len(ordered) * 0.9)], 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(FakeUpstream(required_key=UPSTREAM_KEY)) as upstream:
        folder = Path(tmp)
        cert, ca_key = make_ca(folder, "bench egress CA", days=1)
        port, proxy_port = free_port(), free_port()
        config = folder / "sluicegate.yaml"
        config.write_text(CONFIG.format(upstream=upstream, proxy_port=proxy_port, cert=cert, key=ca_key))
        data_dir = folder / "data"
        key = KeyStore(create_engine(Settings(data_dir=data_dir).db_url())).create("bench")[0]
        env = {**os.environ, "SLUICEGATE_DATA_DIR": str(data_dir), "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
        command = [sys.executable, "-m", "sluicegate.cli", "serve", "--config", str(config), "--port", str(port)]
        proc = subprocess.Popen([*command, "--workers", "1", "--log-level", "WARNING"], env=env)
        try:
            gateway, proxy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(gateway + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.05)
            trust = ssl.create_default_context(cafile=str(cert))

            def via_proxy() -> httpx.Client:
                return httpx.Client(proxy=proxy, verify=trust)

            intercepted = "https://api.openai.com/v1/chat/completions"
            direct = gateway + "/v1/chat/completions"
            first = timed(via_proxy, intercepted, key, 1, reuse=True)[0]
            for make, url in ((httpx.Client, direct), (via_proxy, intercepted)):
                timed(make, url, key, 50, reuse=True)  # warm-up
            results = {
                "first_intercepted_call_ms": round(first, 3),
                "direct_kept_alive": percentiles(timed(httpx.Client, direct, key, args.calls, reuse=True)),
                "intercepted_kept_alive": percentiles(timed(via_proxy, intercepted, key, args.calls, reuse=True)),
                "direct_new_connection": percentiles(timed(httpx.Client, direct, key, args.calls, reuse=False)),
                "intercepted_new_tunnel": percentiles(timed(via_proxy, intercepted, key, args.calls, reuse=False)),
                "calls": args.calls,
                "cpus": os.cpu_count(),
            }
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"first intercepted call (issues the leaf): {results['first_intercepted_call_ms']:.1f} ms")
    print(f"{'':<28}{'p50':>9}{'p90':>9}{'p99':>9}   (ms, {args.calls} sequential calls)")
    for name in ("direct_kept_alive", "intercepted_kept_alive", "direct_new_connection", "intercepted_new_tunnel"):
        row = results[name]
        assert isinstance(row, dict)
        print(f"{name:<28}{row['p50']:>9.2f}{row['p90']:>9.2f}{row['p99']:>9.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
