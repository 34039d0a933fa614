"""What a crash costs the audit trail: `kill -9` of a loaded gateway, then count the answered calls
that left no audit event, for each `audit.durability`.

Starts the fake upstream and `sluicegate serve` (as `bench/run.py` does), runs `--clients` streaming
and non-streaming clients against it, SIGKILLs the gateway after `--seconds`, starts it again (which
replays its spill file), and compares the request ids of fully received responses with the store.

    .venv/bin/python bench/crash.py [--seconds 3] [--clients 16] [--runs 3] [--durability queued,before_response]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CONFIG, free_port, sluicegate_bin, wait_ready


async def load(
    url: str, key: str, clients: int, seconds: float, proc: subprocess.Popen[bytes]
) -> tuple[list[str], float]:
    """Send calls until the gateway is killed `seconds` in; the ids of the responses fully received."""
    answered: list[str] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bodies = [
        orjson.dumps({"model": "bench-chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        for stream in (False, True)
    ]
    killed = asyncio.Event()

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        while not killed.is_set():
            try:
                async with session.post(url, data=bodies[i % 2], headers=headers) as resp:
                    body = await resp.read()  # raises on a cut body: only whole responses count
                    if resp.status == 200 and (i % 2 == 0 or body.rstrip().endswith(b"data: [DONE]")):
                        answered.append(resp.headers["x-request-id"])
            except (aiohttp.ClientError, TimeoutError):
                return

    async def killer() -> float:
        await asyncio.sleep(seconds)
        proc.send_signal(signal.SIGKILL)
        killed.set()
        return time.monotonic()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        start = time.monotonic()
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        end = await kill_task
    return answered, len(answered) / (end - start)


def one_run(durability: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    config = tmp / "sluicegate.yaml"
    config.write_text(CONFIG.format(port=up_port) + f"audit:\n  durability: {durability}\n")
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    sg = sluicegate_bin()
    created = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(config)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    log = (tmp / "crash.log").open("ab")
    serve = [sg, "serve", "--config", str(config), "--port", str(gw_port), "--log-level", "WARNING"]
    up = subprocess.Popen([sg, "mock-upstream", "--port", str(up_port)], env=env, stdout=log, stderr=log)
    try:
        wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up, tmp)
        gw = subprocess.Popen(serve, env=env, stdout=log, stderr=log)
        wait_ready("gateway", f"http://127.0.0.1:{gw_port}/readyz", gw, tmp)
        answered, rate = asyncio.run(
            load(f"http://127.0.0.1:{gw_port}/v1/chat/completions", key, args.clients, args.seconds, gw)
        )
        gw.wait()
        again = subprocess.Popen(serve, env=env, stdout=log, stderr=log)  # replays the spill file
        wait_ready("gateway", f"http://127.0.0.1:{gw_port}/readyz", again, tmp)
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        log.close()
    with contextlib.closing(sqlite3.connect(tmp / "data" / "sluicegate.db")) as conn:
        stored = {row[0] for row in conn.execute("SELECT request_id FROM audit_events")}
    lost = len(set(answered) - stored)
    return {"durability": durability, "answered": len(answered), "rate": round(rate), "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="load before the kill (default 3)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients, half streaming (default 16)")
    parser.add_argument("--runs", type=int, default=3, help="kills per durability (default 3)")
    parser.add_argument("--durability", default="queued,before_response")
    args = parser.parse_args()
    print("| durability | run | answered | answered/s | lost | lost % |\n|---|---:|---:|---:|---:|---:|")
    for durability in args.durability.split(","):
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="sluicegate-crash-") as tmp:
                r = one_run(durability, args, Path(tmp))
            share = 100 * r["lost"] / r["answered"] if r["answered"] else 0.0
            row = [durability, run + 1, r["answered"], r["rate"], r["lost"], f"{share:.2f}"]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
