"""What observability costs: metrics, the audit hash chain and tracing, each against the floor.

Targets, measured in interleaved rounds in the same run, as `bench/limits.py` does:
- `floor`: `floor_proxy.py`, a bare pass-through on the same stack;
- `bare`: `sluicegate serve` with metrics off, the audit chain off and no content HMACs;
- `metrics`: `bare` plus Prometheus metrics (the default);
- `chain`: `bare` plus the audit hash chain and the content HMACs (the default);
- `chain-only`: `bare` plus the audit hash chain, no content HMACs;
- `gateway`: the defaults (metrics, chain and content HMACs on; tracing off);
- `traced`: the defaults plus `observability.tracing` at 100 % sampling, exporting over OTLP/HTTP
  to a real receiver (`oteltap`, pinned with the clients) that counts the spans it gets;
- `traced-10`: the same at 10 % sampling.
Each target is its own gateway process pinned to the gateway core, measured one at a time.
Non-streaming chat through wrk (same prompt and pinning as `bench/run.py`); CPU per call from
/proc. The ratios are requests per second against the floor's, and against `bare`.

    .venv/bin/python bench/observability.py [--duration 10] [--concurrency 1,16,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
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

TRACE = (
    "observability:\n  tracing: {{enabled: true, endpoint: 'http://127.0.0.1:{{otlp}}/v1/traces', sample_ratio: {}}}\n"
)
OFF = "  chain: {enabled: false}\n  content_hmac: false\n"
#: each gateway's config, added to the benchmark's base config
VARIANTS = {
    "bare": "audit:\n" + OFF + "observability:\n  metrics: {enabled: false}\n",
    "metrics": "audit:\n" + OFF,
    "chain": "observability:\n  metrics: {enabled: false}\n",
    # the chain without the content HMACs
    "chain-only": "audit:\n  content_hmac: false\nobservability:\n  metrics: {enabled: false}\n",
    "gateway": "",
    "traced": TRACE.format(1.0),
    "traced-10": TRACE.format(0.1),
}

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
    up_port, paced_port, floor_port, otlp_port = (free_port() for _ in range(4))
    sg = sluicegate_bin()
    base = CONFIG.format(port=up_port, paced_port=paced_port)
    names = [n for n in VARIANTS if n in args.targets]
    configs = {}
    for name in names:
        path = configs[name] = tmp / f"{name}.yaml"
        path.write_text(base + VARIANTS[name].replace("{otlp}", str(otlp_port)))
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    created = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(configs[names[0]])],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    pin, client_pin = ["taskset", "-c", GATEWAY_CORE], ["taskset", "-c", CLIENT_CORE]
    up_cmd = [*client_pin, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    rx_cmd = [*client_pin, sys.executable, "-c", RECEIVER, str(otlp_port)]
    floor_cmd = [*pin, sys.executable, str(BENCH_DIR / "floor_proxy.py"), f"http://127.0.0.1:{up_port}"]
    floor_cmd.append(str(floor_port))
    rows: list[dict[str, Any]] = []
    requests_traced = 0
    with running("receiver", rx_cmd, env, tmp), contextlib.ExitStack() as stack:
        wait_for_line(tmp / "receiver.log", "RECEIVING")
        up_proc = stack.enter_context(running("upstream", up_cmd, env, tmp))
        floor_proc = stack.enter_context(running("floor", floor_cmd, env, tmp))
        wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up_proc, tmp)
        wait_ready("floor", f"http://127.0.0.1:{floor_port}/healthz", floor_proc, tmp)
        targets = [Target("floor", f"http://127.0.0.1:{floor_port}", "gpt-4o-mini", "sk-bench-direct", floor_proc.pid)]
        for name in names:
            port = free_port()
            cmd = [*pin, sg, "serve", "--config", str(configs[name]), "--port", str(port), "--log-level", "WARNING"]
            proc = stack.enter_context(running(name, cmd, env, tmp))
            url = f"http://127.0.0.1:{port}"
            wait_ready(name, url + "/readyz", proc, tmp)
            targets.append(Target(name, url, "bench-chat", key, proc.pid))
        for target in targets:
            smoke_test(target)
            if target.name == "traced":
                requests_traced += 1
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for target in targets:
                    print(f"round {rnd} {target.name:<9} c={c:<3}", end=" ", flush=True, file=sys.stderr)
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
    names = [n for n in ("floor", *VARIANTS) if any(k[0] == n for k in by)]
    out = []
    for c in sorted({k[1] for k in by}):

        def med(name: str, field: str, conc: int = c) -> float:
            return statistics.median(r.get(field, float("nan")) for r in by[(name, conc)])

        for name in names:
            out.append(
                [
                    c,
                    name,
                    f"{med(name, 'rps'):.0f}",
                    f"{med(name, 'rps') / med('floor', 'rps'):.3f}",
                    f"{med(name, 'rps') / med('bare', 'rps'):.3f}" if "bare" in names else "-",
                    f"{med(name, 'cpu_ms_per_request'):.4f}",
                    f"{med(name, 'p50_ms'):.3f}",
                ]
            )
    headers = ["conc", "target", "req/s", "/floor", "/bare", "CPU ms/call", "p50 ms"]
    spans = res.get("spans_received")
    sent = res.get("traced_requests_sent") or 0
    note = f"\nspans received: {spans} for about {sent} requests traced at 100 %" + (
        f" ({spans / sent:.1f} per request)" if spans and sent else ""
    )
    return table(headers, out) + note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, interleaved (median shown)")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(VARIANTS), help="which gateways")
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
