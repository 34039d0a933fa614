"""What tracing costs: the floor, the gateway with its defaults, and the gateway tracing every call.

Three targets, measured in interleaved rounds in the same run, as `bench/limits.py` does:
- `floor`: `floor_proxy.py`, a bare pass-through on the same stack;
- `gateway`: `sluicegate serve` with the default observability settings (tracing off);
- `traced`: a second gateway, the same config plus `observability.tracing` at 100 % sampling,
  exporting over OTLP/HTTP to a real receiver (`oteltap`, pinned with the clients) that counts
  the spans it gets.
Non-streaming chat through wrk (same prompt and pinning as `bench/run.py`); CPU per call from
/proc. The ratios are requests per second against the floor's.

    .venv/bin/python bench/observability.py [--duration 10] [--concurrency 1,16,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import (
    BENCH_DIR,
    CLIENT_CORE,
    CONFIG,
    GATEWAY_CORE,
    BenchError,
    Target,
    cpu_seconds,
    free_port,
    machine,
    running,
    sluicegate_bin,
    smoke_test,
    table,
    wait_ready,
    wrk,
)

TRACING = """\
observability:
  tracing:
    enabled: true
    endpoint: http://127.0.0.1:{port}/v1/traces
    sample_ratio: 1.0
"""

#: a receiver that counts the spans it gets and says how many when stopped (SIGTERM)
RECEIVER = """\
import asyncio, signal, sys
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

async def main(port):
    count = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with OtelTapHttpProtobufReceiver(OtelTapHttpProtobufReceiverSettings(http_port=port)) as receiver:
        async def counting():
            nonlocal count
            async for _ in receiver.stream_traces():
                count += 1
        task = asyncio.create_task(counting())
        print("RECEIVING", flush=True)
        await stop.wait()
        await asyncio.sleep(1)  # the gateway's last batch, sent at its shutdown
        task.cancel()
    print(f"SPANS {count}", flush=True)

asyncio.run(main(int(sys.argv[1])))
"""


def measure(target: Target, c: int, duration: float, warmup: float) -> dict[str, Any]:
    warm = wrk(target, c, warmup)
    cpu = cpu_seconds(target.pid)
    r = wrk(target, c, duration)
    if target.pid is not None and r["requests"]:
        r["cpu_ms_per_request"] = round((cpu_seconds(target.pid) - cpu) * 1000 / r["requests"], 4)
    r["warmup_sent"] = warm["sent"]
    return r


def wait_for_line(log: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise BenchError(f"{log.name} never said {text!r}")


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up_port, paced_port, gw_port, traced_port, floor_port, otlp_port = (free_port() for _ in range(6))
    sg = sluicegate_bin()
    base = CONFIG.format(port=up_port, paced_port=paced_port)
    plain, traced = tmp / "plain.yaml", tmp / "traced.yaml"
    plain.write_text(base)
    traced.write_text(base + TRACING.format(port=otlp_port))
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(tmp / "data"), "BENCH_UPSTREAM_KEY": "sk-bench-upstream"}
    created = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(plain)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    pin, client_pin = ["taskset", "-c", GATEWAY_CORE], ["taskset", "-c", CLIENT_CORE]
    up_cmd = [*client_pin, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    rx_cmd = [*client_pin, sys.executable, "-c", RECEIVER, str(otlp_port)]
    gw_cmd = [*pin, sg, "serve", "--config", str(plain), "--port", str(gw_port), "--log-level", "WARNING"]
    tr_cmd = [*pin, sg, "serve", "--config", str(traced), "--port", str(traced_port), "--log-level", "WARNING"]
    floor_cmd = [*pin, sys.executable, str(BENCH_DIR / "floor_proxy.py"), f"http://127.0.0.1:{up_port}"]
    floor_cmd.append(str(floor_port))
    rows: list[dict[str, Any]] = []
    requests_traced = 0
    with running("receiver", rx_cmd, env, tmp):
        wait_for_line(tmp / "receiver.log", "RECEIVING")
        with (
            running("upstream", up_cmd, env, tmp) as up_proc,
            running("floor", floor_cmd, env, tmp) as floor_proc,
            running("gateway", gw_cmd, env, tmp) as gw_proc,
            running("traced", tr_cmd, env, tmp) as tr_proc,
        ):
            gw, tr = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{traced_port}"
            wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up_proc, tmp)
            wait_ready("floor", f"http://127.0.0.1:{floor_port}/healthz", floor_proc, tmp)
            wait_ready("gateway", gw + "/readyz", gw_proc, tmp)
            wait_ready("traced", tr + "/readyz", tr_proc, tmp)
            targets = [
                Target("floor", f"http://127.0.0.1:{floor_port}", "gpt-4o-mini", "sk-bench-direct", floor_proc.pid),
                Target("gateway", gw, "bench-chat", key, gw_proc.pid),
                Target("traced", tr, "bench-chat", key, tr_proc.pid),
            ]
            for target in targets:
                smoke_test(target)
            requests_traced += 1
            for rnd in range(args.rounds):
                for c in args.concurrency:
                    for target in targets:
                        print(f"round {rnd} {target.name:<8} c={c:<3}", end=" ", flush=True, file=sys.stderr)
                        r = {"round": rnd, "target": target.name, "concurrency": c}
                        r.update(measure(target, c, args.duration, args.warmup))
                        rows.append(r)
                        if target.name == "traced":
                            # wrk's warm-up requests are traced too
                            requests_traced += r["sent"] + r["warmup_sent"]
                        print(f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']:.3f} ms", file=sys.stderr)
    spans = re.search(r"SPANS (\d+)", (tmp / "receiver.log").read_text())
    received = int(spans[1]) if spans else None
    return {"machine": machine(), "rows": rows, "spans_received": received, "traced_requests_sent": requests_traced}


def summary(res: dict[str, Any]) -> str:
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by.setdefault((r["target"], r["concurrency"]), []).append(r)
    out = []
    for c in sorted({k[1] for k in by}):

        def med(name: str, field: str, conc: int = c) -> float:
            return statistics.median(r.get(field, float("nan")) for r in by[(name, conc)])

        out.append(
            [
                c,
                f"{med('floor', 'rps'):.0f}",
                f"{med('gateway', 'rps'):.0f}",
                f"{med('traced', 'rps'):.0f}",
                f"{med('gateway', 'rps') / med('floor', 'rps'):.3f}",
                f"{med('traced', 'rps') / med('floor', 'rps'):.3f}",
                f"{med('traced', 'rps') / med('gateway', 'rps'):.3f}",
                f"{med('gateway', 'cpu_ms_per_request'):.4f}",
                f"{med('traced', 'cpu_ms_per_request'):.4f}",
                f"{med('floor', 'p50_ms'):.3f}",
                f"{med('gateway', 'p50_ms'):.3f}",
                f"{med('traced', 'p50_ms'):.3f}",
            ]
        )
    headers = [
        "conc", "rps floor", "rps gateway", "rps traced", "gateway/floor", "traced/floor", "traced/gateway",
        "CPU ms gateway", "CPU ms traced", "p50 floor", "p50 gateway", "p50 traced",
    ]  # fmt: skip
    spans = res.get("spans_received")
    sent = res.get("traced_requests_sent") or 0
    note = f"\nspans received: {spans} for about {sent} traced requests" + (
        f" ({spans / sent:.1f} per request)" if spans and sent else ""
    )
    return table(headers, out) + note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, interleaved (median shown)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "observability.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-observability-") as tmp:
        res = bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
