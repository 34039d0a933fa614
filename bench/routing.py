"""What routing costs: a model of two weighted targets, and one with content-aware rules and pins,
against the same model of one provider and against the floor.

Targets, measured in interleaved rounds in the same run, as `bench/observability.py` does:
- `floor`: `floor_proxy.py`, a bare pass-through on the same stack;
- `gateway`: `sluicegate serve` with the benchmark's config (`bench-chat` served by `mock`);
- `weighted`: `bench-chat` as two targets on `mock`, `strategy: weighted` 3:1, breakers and
  retry budgets on (the defaults);
- `rules`: `weighted` plus a `when` rule (on images: it never holds for this prompt) and a pin
  covering every consumer (allowing `mock`): what reading conditions and filtering targets add.
Each target is its own gateway process pinned to the gateway core, measured one at a time, the
gateways in a rotated order each round.
Non-streaming chat through wrk (same prompt and pinning as `bench/run.py`); CPU per call from
/proc. The ratios are requests per second and CPU per call against `gateway`'s.

    .venv/bin/python bench/routing.py [--duration 10] [--concurrency 1,16,64] [--rounds 3]
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
    BENCH_DIR,
    CLIENT_CORE,
    CONFIG,
    GATEWAY_CORE,
    Target,
    free_port,
    machine,
    running,
    sluicegate_bin,
    smoke_test,
    table,
    wait_ready,
    wrk,
)

#: the benchmark config's one-provider model, which each variant replaces
SINGLE = "  - name: bench-chat\n    provider: mock\n    model: gpt-4o-mini\n"
WEIGHTED = """\
  - name: bench-chat
    strategy: weighted
    targets:
      - {provider: mock, model: gpt-4o-mini, weight: 3}
      - {provider: mock, model: gpt-4o-mini-b, weight: 1}
"""
RULES = (
    WEIGHTED
    + """\
    when:
      - {name: vision, images: true, targets: [{provider: mock, model: gpt-4o}]}
"""
)
PINS = "routing:\n  pins:\n    - {name: everyone, providers: [mock]}\n"
#: each gateway's model entry, and YAML added to the config
VARIANTS = {"gateway": (SINGLE, ""), "weighted": (WEIGHTED, ""), "rules": (RULES, PINS)}


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up_port, paced_port, floor_port = (free_port() for _ in range(3))
    sg = sluicegate_bin()
    base = CONFIG.format(port=up_port, paced_port=paced_port)
    assert SINGLE in base, "the benchmark config changed: update SINGLE"
    names = [n for n in VARIANTS if n in args.targets]
    configs = {}
    for name in names:
        model, extra = VARIANTS[name]
        path = configs[name] = tmp / f"{name}.yaml"
        path.write_text(base.replace(SINGLE, model) + extra)
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
    floor_cmd = [*pin, sys.executable, str(BENCH_DIR / "floor_proxy.py"), f"http://127.0.0.1:{up_port}"]
    floor_cmd.append(str(floor_port))
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
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
            # every gateway warms up the same way before the first measured round
            wrk(target, 8, args.warmup)
        for rnd in range(args.rounds):
            # The gateways take turns going first: an order effect would otherwise favour one.
            shift = rnd % (len(targets) - 1)
            order = [targets[0], *targets[1 + shift :], *targets[1 : 1 + shift]]
            for c in args.concurrency:
                for target in order:
                    print(f"round {rnd} {target.name:<9} c={c:<3}", end=" ", flush=True, file=sys.stderr)
                    r = {"round": rnd, "target": target.name, "concurrency": c}
                    r.update(measure(target, c, args.duration, args.warmup))
                    rows.append(r)
                    print(f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']:.3f} ms", file=sys.stderr)
    return {"machine": machine(), "rows": rows}


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
                    f"{med(name, 'rps') / med('gateway', 'rps'):.3f}" if "gateway" in names else "-",
                    f"{med(name, 'cpu_ms_per_request'):.4f}",
                    f"{med(name, 'cpu_ms_per_request') / med('gateway', 'cpu_ms_per_request'):.3f}"
                    if "gateway" in names and name != "floor"
                    else "-",
                    f"{med(name, 'p50_ms'):.3f}",
                ]
            )
    headers = ["conc", "target", "req/s", "/floor", "/gateway", "CPU ms/call", "CPU /gateway", "p50 ms"]
    return table(headers, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, interleaved (median shown)")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(VARIANTS), help="which gateways")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "routing.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-routing-") as tmp:
        res = bench(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
