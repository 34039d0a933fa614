"""What `sluicegate serve --workers N` buys: throughput and CPU per call with 1, 2 ... workers.

The upstream and wrk stay pinned to the client core as in `bench/run.py`; N workers are given the
first N cores (one worker the gateway core, as in `bench/run.py`; `--no-pin`: every core). On a
2-core machine the second worker shares the client
core with wrk and the upstream, so the upstream must cost little: by default it is nginx (when
installed) answering every chat completion with one fixed OpenAI body, a few microseconds of C
per call; `--upstream mock` uses the Python fake upstream of the other benches, which needs most
of a core itself at these rates. CPU per call is summed over the supervisor and its workers.
Each worker's RSS is read idle and after the measured runs.

    .venv/bin/python bench/workers.py [--workers 1,2] [--duration 10] [--concurrency 64] [--rounds 3]
        [--upstream nginx|mock]
"""

from __future__ import annotations

import argparse
import contextlib
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
    wrk,
)

#: what nginx answers to every chat completion: an OpenAI body with usage, as the fake upstream's
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764806400,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "bench-smoke"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    location = /v1/chat/completions {{ return 200 '{answer}'; }}
    location / {{ return 200 '{{"object": "list", "data": []}}'; }}
  }}
}}
"""


def upstream_command(kind: str, port: int, tmp: Path, sg: str) -> list[str]:
    """The upstream server's command line, pinned to the client core."""
    if kind == "mock":
        return ["taskset", "-c", CLIENT_CORE, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(port)]
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, answer=json.dumps(ANSWER)))
    return ["taskset", "-c", CLIENT_CORE, "nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]


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
    up_cmd = upstream_command(args.upstream, up_port, tmp, sg)
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(running("upstream", up_cmd, env, tmp))
        wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up, tmp)
        targets = []
        roots: dict[str, int] = {}
        for n in args.workers:
            port = free_port()
            cmd = [sg, "serve", "--config", str(config), "--port", str(port), "--workers", str(n)]
            if args.pin:  # N workers on the first N cores: one worker on the gateway core, as bench/run.py
                cmd = ["taskset", "-c", f"0-{n - 1}", *cmd]
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
                    r = {"round": rnd, "target": target.name, "concurrency": c}
                    r["warmup_sent"] = wrk(target, c, args.warmup)["sent"]
                    before = sum(cpu(p) for p in tree(roots[target.name]))  # the measured run's CPU only
                    r.update(wrk(target, c, args.duration))
                    r["cpu_ms_per_request"] = round(
                        (sum(cpu(p) for p in tree(roots[target.name])) - before) * 1000 / max(1, r["requests"]), 4
                    )
                    rows.append(r)
                    print(f"round {rnd} {target.name} c={c} {r['rps']:.0f} req/s", file=sys.stderr)
        for target in targets:
            workers = tree(roots[target.name])[1:] or [roots[target.name]]
            memory[target.name]["loaded_rss_mib"] = [round(rss_mib(p), 1) for p in workers]
    return {"machine": machine(), "upstream": args.upstream, "pinned": args.pin, "rows": rows, "memory": memory}


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
    parser.add_argument("--upstream", choices=["nginx", "mock"], default="nginx" if shutil.which("nginx") else "mock")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="N workers on cores 0..N-1 (default)"
    )
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
