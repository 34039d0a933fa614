"""CPU instructions per call of a served gateway, counted by cachegrind: a figure this noisy shared
machine cannot move, to tell a few per cent of added work from the weather of wall-clock runs.

The gateway (`sluicegate serve`, unguarded consumer, default settings, audit writer included; with
`--limits`, a consumer with the budget and rate limit of `bench/limits.py`) runs
under `valgrind --tool=cachegrind`; a client sends N chat calls one at a time, then the gateway is
stopped. The same is done with no call, and the difference over N is the instructions per call
(user space only: system calls are not counted, and cost the same before and after).

    .venv/bin/python bench/instructions.py                       # 1000 calls, the installed package
    .venv/bin/python bench/instructions.py --gateway-source /tmp/before --calls 2000

Needs valgrind. Figures vary by 1-2 % between runs (how the audit writer's batches fall).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from limits import LIMITS
from run import CONFIG, PROMPT, free_port, sluicegate_bin


def _wait_ready(port: int, proc: subprocess.Popen[bytes], seconds: float = 600.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode} before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the gateway did not get ready under valgrind")


def count(calls: int, source: Path | None, tmp: Path, limits: bool = False, extra: str = "") -> int:
    """Instructions of a gateway process that served `calls` calls, from start to stop; with
    `limits`, for a consumer with a budget and a rate limit (in-process counters)."""
    up_port, paced_port, gw_port = free_port(), free_port(), free_port()
    config = tmp / "sluicegate.yaml"
    config.write_text(
        CONFIG.format(port=up_port, paced_port=paced_port) + (LIMITS.format(backend="") if limits else "") + extra
    )
    consumer = "bench-limited" if limits else "bench"
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / f"data-{calls}"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    gw_env = dict(env)
    if source is not None:
        gw_env["PYTHONPATH"] = str(source)
    sg = sluicegate_bin()
    key = subprocess.run(
        [sg, "keys", "create", "--consumer", consumer, "--config", str(config)],
        env=gw_env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    out = tmp / f"cachegrind-{calls}.out"
    upstream = subprocess.Popen(
        [sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gateway = subprocess.Popen(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", sys.executable, sg,
         "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(gw_port), "--log-level", "WARNING"],
        env=gw_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_ready(gw_port, gateway)
        body = json.dumps({"model": "bench-chat", "messages": [{"role": "user", "content": PROMPT}]}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=60)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for _ in range(calls):
            conn.request("POST", "/v1/chat/completions", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"the gateway answered {response.status}")
        conn.close()
        time.sleep(1.0)  # the audit writer commits the last batch
        gateway.send_signal(signal.SIGINT)
        gateway.wait(120)
    finally:
        for proc in (gateway, upstream):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit("cachegrind wrote no summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls served (default 1000)")
    parser.add_argument("--gateway-source", type=Path, help="run the `sluicegate` package in this folder")
    parser.add_argument(
        "--limits", action="store_true", help="a consumer with a budget and a rate limit (bench/limits.py's)"
    )
    parser.add_argument("--extra", type=Path, help="YAML appended to the config (e.g. `observability.py`'s variants)")
    args = parser.parse_args()
    extra = args.extra.read_text() if args.extra else ""
    with tempfile.TemporaryDirectory(prefix="sluicegate-instr-") as tmp:
        idle = count(0, args.gateway_source, Path(tmp), args.limits, extra)
        served = count(args.calls, args.gateway_source, Path(tmp), args.limits, extra)
    per_call = (served - idle) / args.calls
    print(f"instructions per call: {per_call:,.0f} ({args.calls} calls; start and stop alone: {idle:,})")


if __name__ == "__main__":
    main()
