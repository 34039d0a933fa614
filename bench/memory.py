"""The memory of one gateway process: idle on the default config (demo mode), then under load.

Starts `sluicegate serve` with no config (demo mode: SQLite in a fresh data folder, the built-in
mock upstream in the same process, the README's first command), waits for `/readyz`, lets it
settle, and reads the process's resident memory from /proc (`VmRSS`, and its anonymous and
file-backed parts). Then it sends `--calls` chat completions to `mock-chat` through the gateway
(`--concurrency` at once, an aiohttp client in this process), reads the memory again after each
quarter of them and once more after the same settle time, and prints everything with the peak
(`VmHWM`). Linux only (it reads /proc).

    .venv/bin/python bench/memory.py [--calls 20000] [--concurrency 16] [--stream]
        [--gateway-source DIR] [--out bench/results/memory.json]

`--gateway-source DIR` runs the gateway from the `sluicegate` package in `DIR` (see bench/README.md
for making one from an older commit), so two commits are compared on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads")
PROMPT = "echo: Summarise the quarterly report for the board in three lines, largest risks first."


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory(pid: int) -> dict[str, float]:
    """The process's memory figures in MiB (`Threads` as a count), from /proc/PID/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in FIELDS:
                number = float(value.split()[0])
                out[name] = number if name == "Threads" else round(number / 1024, 1)
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> float:
    """Seconds until `/readyz` answered 200; raises if the gateway exits or never gets ready."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"the gateway was not ready at {url} after {timeout:.0f} s")


async def load(
    base: str, key: str, calls: int, concurrency: int, stream: bool, checkpoint: Any
) -> tuple[dict[int, int], int]:
    """`calls` chat completions, `concurrency` at once, `checkpoint(done)` after each quarter; the
    statuses, and the most audit events `/readyz` showed waiting for the writer meanwhile (a
    backlog is memory the process holds until the writer catches up)."""
    body = orjson.dumps({"model": "mock-chat", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    backlog = 0
    quarter = max(1, calls // 4)
    async with aiohttp.ClientSession() as probe:

        async def watch() -> None:
            nonlocal backlog
            while True:
                async with probe.get(base + "/readyz") as resp:
                    backlog = max(backlog, int((await resp.json()).get("audit_pending", 0)))
                await asyncio.sleep(0.2)

        async def worker(session: aiohttp.ClientSession, pending: Iterator[int]) -> None:
            for _ in pending:
                async with session.post(base + "/v1/chat/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        watcher = asyncio.create_task(watch())
        for start in range(0, calls, quarter):
            count = min(quarter, calls - start)
            pending = iter(range(count))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
                await asyncio.gather(*(worker(session, pending) for _ in range(concurrency)))
            checkpoint(start + count)
        watcher.cancel()
    return statuses, backlog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="chat completions sent (0: idle only)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed completions")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds waited before each idle reading")
    parser.add_argument("--gateway-source", type=Path, help="run the sluicegate package in this folder")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sluicegate-memory-") as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "SLUICEGATE_DATA_DIR": str(data)}
        env.pop("OPENAI_API_KEY", None)  # demo mode adds real providers when these are set
        env.pop("ANTHROPIC_API_KEY", None)
        if args.gateway_source is not None:
            source = args.gateway_source.resolve()
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-c", "from sluicegate.cli import main; main()", "serve", "--port", str(port)]
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:
            # From the temporary folder: `-c` puts the working directory first on the import path.
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            ready_s = wait_ready(base + "/readyz", proc, log)
            time.sleep(args.settle)
            idle = memory(proc.pid)
            print(f"ready after {ready_s:.2f} s; idle: {idle}")
            steps: list[dict[str, Any]] = []

            def checkpoint(done: int) -> None:
                figures = memory(proc.pid)
                steps.append({"calls": done, **figures})
                print(f"after {done} calls: {figures}")

            statuses: dict[int, int] = {}
            backlog = 0
            loaded: dict[str, float] = {}
            if args.calls > 0:
                key = (data / "demo-key").read_text(encoding="utf-8").strip()
                started = time.monotonic()
                statuses, backlog = asyncio.run(load(base, key, args.calls, args.concurrency, args.stream, checkpoint))
                elapsed = time.monotonic() - started
                print(
                    f"{args.calls} calls in {elapsed:.1f} s ({args.calls / elapsed:.0f}/s), statuses {statuses}, "
                    f"audit backlog at most {backlog} events"
                )
                time.sleep(args.settle)
                loaded = memory(proc.pid)
                print(f"settled after the calls: {loaded}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report = {
        "gateway_source": str(args.gateway_source or "installed package"),
        "python": sys.version.split()[0],
        "calls": args.calls,
        "concurrency": args.concurrency,
        "stream": args.stream,
        "idle_mib": idle,
        "steps": steps,
        "loaded_mib": loaded,
        "statuses": {str(k): v for k, v in statuses.items()},
        "audit_backlog_max": backlog,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if any(status != 200 for status in statuses):
        raise SystemExit(f"some calls failed: {statuses}")


if __name__ == "__main__":
    main()
