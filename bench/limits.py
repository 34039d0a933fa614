"""What the limits stage costs: the floor, the gateway without limits, and the gateway with a
budget and a rate limit on the consumer, with in-process counters and with Redis.

One gateway serves three consumers, measured one after the other in the same run:
- `bench`: no limits;
- `bench-limited`: a monthly budget, and a rate limit of requests, tokens and concurrent calls, on
  the consumer (in-process counters; set so nothing is refused);
- `bench-two`: the same budget and a requests-per-minute limit only (two counters);
- the four-counter rules in a second gateway whose counters live in Redis (`redis-server` pinned with the
  clients), for the added latency at concurrency 1 and the throughput at 64.
Non-streaming chat through wrk, as `bench/run.py` does (same prompt, same pinning); CPU per call
from /proc.

    .venv/bin/python bench/limits.py [--duration 10] [--concurrency 1,16,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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

LIMITS = """\
  - name: bench-limited
    models: ["*"]
  - name: bench-two
    models: ["*"]
limits:
{backend}  budgets:
    - {{name: monthly, scope: consumer, match: [bench-limited, bench-two], amount: 1000000, window: month}}
  rate_limits:
    - {{name: rl, scope: consumer, match: [bench-limited], requests: 1000000000, tokens: 100000000000,
       concurrent: 100000, window: minute}}
    - {{name: rpm, scope: consumer, match: [bench-two], requests: 1000000000, window: minute}}
"""


def measure(target: Target, c: int, duration: float, warmup: float) -> dict[str, Any]:
    wrk(target, c, warmup)
    cpu = cpu_seconds(target.pid)
    r = wrk(target, c, duration)
    if target.pid is not None and r["requests"]:
        r["cpu_ms_per_request"] = round((cpu_seconds(target.pid) - cpu) * 1000 / r["requests"], 4)
    return r


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up_port, paced_port, gw_port, redis_gw_port, floor_port, redis_port = (free_port() for _ in range(6))
    sg = sluicegate_bin()
    base = CONFIG.format(port=up_port, paced_port=paced_port)
    configs = {}
    for name, backend in (
        ("memory", ""),
        ("redis", f'  backend: redis\n  redis: {{url: "redis://127.0.0.1:{redis_port}/0"}}\n'),
    ):
        path = tmp / f"{name}.yaml"
        path.write_text(base + LIMITS.format(backend=backend))
        configs[name] = path
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    keys = {}
    for consumer in ("bench", "bench-limited", "bench-two"):
        created = subprocess.run(
            [sg, "keys", "create", "--consumer", consumer, "--config", str(configs["memory"])],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        keys[consumer] = created.stdout.strip().splitlines()[-1]
    pin = ["taskset", "-c", GATEWAY_CORE]
    up_cmd = ["taskset", "-c", CLIENT_CORE, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise BenchError("redis-server is not installed")
    redis_cmd = ["taskset", "-c", CLIENT_CORE, redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1"]
    redis_cmd += ["--save", "", "--appendonly", "no"]
    gw_cmd = [*pin, sg, "serve", "--config", str(configs["memory"]), "--port", str(gw_port), "--log-level", "WARNING"]
    rgw_cmd = [*pin, sg, "serve", "--config", str(configs["redis"]), "--port", str(redis_gw_port)]
    rgw_cmd += ["--log-level", "WARNING"]
    up_base = f"http://127.0.0.1:{up_port}"
    rows: list[dict[str, Any]] = []
    with (
        running("upstream", up_cmd, env, tmp) as up_proc,
        running("redis", redis_cmd, env, tmp),
        running(
            "floor", [*pin, sys.executable, str(BENCH_DIR / "floor_proxy.py"), up_base, str(floor_port)], env, tmp
        ) as floor_proc,
        running("gateway", gw_cmd, env, tmp) as gw_proc,
        running("gateway-redis", rgw_cmd, env, tmp) as rgw_proc,
    ):
        gw, rgw = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{redis_gw_port}"
        wait_ready("upstream", up_base + "/v1/models", up_proc, tmp)
        wait_ready("floor", f"http://127.0.0.1:{floor_port}/healthz", floor_proc, tmp)
        wait_ready("gateway", gw + "/readyz", gw_proc, tmp)
        wait_ready("gateway-redis", rgw + "/readyz", rgw_proc, tmp)
        targets = [
            Target("floor", f"http://127.0.0.1:{floor_port}", "gpt-4o-mini", "sk-bench-direct", floor_proc.pid),
            Target("gateway", gw, "bench-chat", keys["bench"], gw_proc.pid),
            Target("limits", gw, "bench-chat", keys["bench-limited"], gw_proc.pid),
            # a budget and a requests-per-minute limit only: two counters instead of four
            Target("limits-2", gw, "bench-chat", keys["bench-two"], gw_proc.pid),
            Target("limits-redis", rgw, "bench-chat", keys["bench-limited"], rgw_proc.pid),
        ]
        for target in targets:
            smoke_test(target)
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for target in targets:
                    print(f"round {rnd} {target.name:<13} c={c:<3}", end=" ", flush=True, file=sys.stderr)
                    r = {"round": rnd, "target": target.name, "concurrency": c}
                    r.update(measure(target, c, args.duration, args.warmup))
                    rows.append(r)
                    print(f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']:.3f} ms", file=sys.stderr)
    return {"machine": machine(), "rows": rows}


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
                f"{med('limits', 'rps'):.0f}",
                f"{med('limits-2', 'rps'):.0f}",
                f"{med('limits-redis', 'rps'):.0f}",
                f"{med('limits', 'rps') / med('gateway', 'rps'):.3f}",
                f"{med('limits-2', 'rps') / med('gateway', 'rps'):.3f}",
                f"{med('limits', 'rps') / med('floor', 'rps'):.3f}",
                f"{med('gateway', 'cpu_ms_per_request'):.4f}",
                f"{med('limits', 'cpu_ms_per_request'):.4f}",
                f"{med('limits-2', 'cpu_ms_per_request'):.4f}",
                f"{med('limits-redis', 'cpu_ms_per_request'):.4f}",
                f"{med('gateway', 'p50_ms'):.3f}",
                f"{med('limits', 'p50_ms'):.3f}",
                f"{med('limits-redis', 'p50_ms'):.3f}",
            ]
        )
    headers = [
        "conc", "rps floor", "rps gateway", "rps limits", "rps limits-2", "rps limits+redis", "limits/gateway",
        "limits-2/gateway", "limits/floor", "CPU ms gateway", "CPU ms limits", "CPU ms limits-2", "CPU ms limits+redis",
        "p50 gateway", "p50 limits", "p50 limits+redis",
    ]  # fmt: skip
    return table(headers, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, interleaved (median shown)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "limits.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-limits-") as tmp:
        res = bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
