"""What `sluicegate serve --workers N` buys: throughput and CPU per call with 1, 2 ... workers.

The fake upstream and wrk stay pinned to the client core as in `bench/run.py`; the gateway is not
pinned, so N workers may use every core (on a 2-core machine they share the client core with wrk
and the upstream: the figure is what this machine can show, not what N free cores would give).
CPU per call is summed over the supervisor and its workers. Each worker's RSS is read idle and
after the measured runs.

    .venv/bin/python bench/workers.py [--workers 1,2] [--duration 10] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from observability import measure
from run import (
    CLIENT_CORE,
    CONFIG,
    Target,
    cpu_seconds,
    free_port,
    machine,
    running,
    sluicegate_bin,
    smoke_test,
    table,
    wait_ready,
)


def tree(pid: int) -> list[int]:
    """The process and its children (the supervisor's workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(c) for c in children)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up_port, paced_port = free_port(), free_port()
    sg = sluicegate_bin()
    config = tmp / "gw.yaml"
    config.write_text(CONFIG.format(port=up_port, paced_port=paced_port))
    env = {**os.environ, "SLUICEGATE_DATA_DIR": str(tmp / "data"), "BENCH_UPSTREAM_KEY": "sk-bench-upstream"}
    created = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(config)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    rows: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    up_cmd = ["taskset", "-c", CLIENT_CORE, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(running("upstream", up_cmd, env, tmp))
        wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up, tmp)
        targets = []
        roots: dict[str, int] = {}
        for n in args.workers:
            port = free_port()
            cmd = [sg, "serve", "--config", str(config), "--port", str(port), "--workers", str(n)]
            proc = stack.enter_context(running(f"workers-{n}", [*cmd, "--log-level", "WARNING"], env, tmp))
            wait_ready(f"workers-{n}", f"http://127.0.0.1:{port}/readyz", proc, tmp)
            # pid None: CPU is measured over the supervisor and its workers here, not by `measure`
            target = Target(f"workers-{n}", f"http://127.0.0.1:{port}", "bench-chat", key, None)
            roots[target.name] = proc.pid
            smoke_test(target)
            targets.append(target)
        for target in targets:
            workers = tree(roots[target.name])[1:] or [roots[target.name]]
            memory[target.name] = {"idle_rss_mib": [round(rss_mib(p), 1) for p in workers]}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for target in targets:
                    before = sum(cpu(p) for p in tree(roots[target.name]))
                    r = {"round": rnd, "target": target.name, "concurrency": c}
                    r.update(measure(target, c, args.duration, args.warmup))
                    r["cpu_ms_per_request"] = round(
                        (sum(cpu(p) for p in tree(roots[target.name])) - before) * 1000 / max(1, r["requests"]), 4
                    )
                    rows.append(r)
                    print(f"round {rnd} {target.name} c={c} {r['rps']:.0f} req/s", file=sys.stderr)
        for target in targets:
            workers = tree(roots[target.name])[1:] or [roots[target.name]]
            memory[target.name]["loaded_rss_mib"] = [round(rss_mib(p), 1) for p in workers]
    return {"machine": machine(), "rows": rows, "memory": memory}


def cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # a worker that ended
        return 0.0


def summary(res: dict[str, Any]) -> str:
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by.setdefault((r["target"], r["concurrency"]), []).append(r)
    names = list(dict.fromkeys(r["target"] for r in res["rows"]))
    out = []
    for c in sorted({k[1] for k in by}):
        base = statistics.median(r["rps"] for r in by[(names[0], c)])
        for name in names:
            rps = statistics.median(r["rps"] for r in by[(name, c)])
            cpu_ms = statistics.median(r["cpu_ms_per_request"] for r in by[(name, c)])
            mem = res["memory"][name]
            out.append(
                [
                    c,
                    name,
                    f"{rps:.0f}",
                    f"{rps / base:.2f}",
                    f"{cpu_ms:.4f}",
                    mem["idle_rss_mib"],
                    mem["loaded_rss_mib"],
                ]
            )
    return table(["conc", "target", "req/s", f"/{names[0]}", "CPU ms/call", "idle RSS MiB", "loaded RSS MiB"], out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "workers.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-workers-") as tmp:
        res = bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
