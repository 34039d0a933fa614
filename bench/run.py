"""Sluicegate overhead benchmark: the latency the gateway adds over calling the upstream directly.

Starts the fake upstream (`sluicegate mock-upstream`, pinned to core 1, and a second one pacing its stream
events 5 ms apart), the gateway (`sluicegate serve`, pinned to core 0, key auth and audit on) and the floor
(`floor_proxy.py`, a bare pass-through on the same stack, also on core 0), then measures chat completions
with a 512-character prompt (echoed back as the answer) against each at each concurrency:

* non-streaming with `wrk` (pinned to core 1, one thread, `bench/chat.lua`): requests/s, p50, p99, and the
  gateway's CPU time per request (process CPU seconds from /proc over requests);
* streaming with an aiohttp client (this process, pinned to core 1): requests/s, time to first token
  (first SSE `data:` event whose delta carries non-empty content) and total time, p50 and p99;
* paced streams (5 ms between events), one at a time: time to first token through the gateway for an
  unguarded and a guarded consumer, for a text whose events each end where no match can be open, and for
  ordinary prose.

The gateway serves two consumers: one without guards and one with regex + pii + secrets guards on input and
output. Prints Markdown tables (added latency = p50(gateway) - p50(direct)), writes every figure as JSON to
--out, and checks that the audit trail holds one row per request the gateway received.

    .venv/bin/python bench/run.py [--duration 10] [--concurrency 1,16,64] [--quick] [--durability before_response]
        [--gateway-source DIR] [--out bench/results/latest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import sqlite3
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

BENCH_DIR = Path(__file__).resolve().parent
LUA = BENCH_DIR / "chat.lua"
#: 512 characters of everyday business prose; the fake upstream answers with the text after `echo: `
PROMPT = (
    "echo: Summarise the quarterly report for the board: revenue grew 8.1 % to 12.4 M EUR, margin rose to "
    "71.3 %, and 41 positions are open across the three sites. Keep it under 200 words, list the largest risks "
    "first, then the actions the team agreed on in the review of 14 March, and close with one line on hiring. "
    "Write for readers who know the business but not the numbers; avoid jargon, explain each figure once, and "
    "say which of them changed since the last quarter and why the forecast for the next one is lower"
)
assert len(PROMPT) == 512
#: paced answers: one whose events each end where no match can still be open (after a comma), and prose,
#: whose events end inside a word that could still become an address or a key
PACED = {
    "list": "Tents, stakes, ropes, lamps, maps, boots, socks, gloves, hats, scarves, kettles, cups, plates, "
    "forks, spoons, knives, matches, candles, blankets, pillows, towels, brushes, combs, mirrors, radios, "
    "cables, notebooks, pencils, erasers, rulers, folders, bags!",
    "prose": PROMPT[6:262],
}
PACED_INTERVAL_MS = 5
GATEWAY_CORE, CLIENT_CORE = "0", "1"  # the upstream, wrk and the streaming client share core 1
CONFIG = """\
providers:
  - name: mock
    type: openai_compatible
    base_url: http://127.0.0.1:{port}/v1
    api_key: env://BENCH_UPSTREAM_KEY
  - name: paced
    type: openai_compatible
    base_url: http://127.0.0.1:{paced_port}/v1
    api_key: env://BENCH_UPSTREAM_KEY
models:
  - name: bench-chat
    provider: mock
    model: gpt-4o-mini
  - name: bench-paced
    provider: paced
    model: gpt-4o-mini
guards:
  - name: codenames
    kind: regex
    settings: {{deny: ['project\\s+nightingale', 'operation\\s+\\w+fall']}}
  - {{name: pii, kind: pii, action: redact}}
  - {{name: secrets, kind: secrets, action: block}}
groups:
  - name: guarded
    guards: [codenames, pii, secrets]
consumers:
  - name: bench
    models: ["*"]
  - name: bench-guarded
    models: ["*"]
    groups: [guarded]
"""
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class BenchError(RuntimeError):
    """The run cannot give meaningful numbers (non-2xx, a process died, the audit trail is off)."""


class Target:
    """One endpoint under test: the upstream directly, or the gateway."""

    def __init__(self, name: str, base: str, model: str, key: str, pid: int | None = None) -> None:
        self.name, self.url, self.model, self.key = name, f"{base}/v1/chat/completions", model, key
        #: the process whose CPU time serves this target (None: not measured)
        self.pid = pid

    def body(self, stream: bool, prompt: str = PROMPT) -> bytes:
        return orjson.dumps({"model": self.model, "stream": stream, "messages": [{"role": "user", "content": prompt}]})


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far, from /proc (0 when not measured)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sluicegate_bin() -> str:
    local = Path(sys.executable).parent / "sluicegate"
    return str(local) if local.exists() else "sluicegate"


@contextlib.contextmanager
def running(name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own session (Ctrl-C reaches only us); SIGTERM it and wait on the way out."""
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"warning: {name} ignored SIGTERM for 20 s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        log.close()


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log_dir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Authorization": "Bearer bench"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise BenchError(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(request, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise BenchError(f"{name} not ready at {url} after {timeout:.0f} s")


def smoke_test(target: Target) -> None:
    """One echo request, so a misconfiguration fails here and not as a wall of non-2xx in wrk."""
    body = orjson.dumps({"model": target.model, "messages": [{"role": "user", "content": "echo: bench-smoke"}]})
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(target.url, body, headers), timeout=10) as resp:
            content = orjson.loads(resp.read())["choices"][0]["message"]["content"]
    except OSError as exc:
        raise BenchError(f"smoke request to {target.name} failed: {exc}") from exc
    if content != "bench-smoke":
        raise BenchError(f"smoke request to {target.name}: expected 'bench-smoke', got {content!r}")


# ------------------------------------------------------------------------------------------------ wrk


def to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise BenchError(f"cannot parse wrk latency {value!r}")
    return round(float(match[1]) * UNITS_MS[match[2]], 3)


def parse_wrk(out: str) -> dict[str, Any]:
    def find(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            if default is None:
                raise BenchError(f"wrk output lacks /{pattern}/:\n{out}")
            return default
        return match[1]

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)")),
        "p50_ms": to_ms(find(r"^\s+50%\s+(\S+)")),
        "p99_ms": to_ms(find(r"^\s+99%\s+(\S+)")),
        "requests": int(find(r"^\s+(\d+) requests in")),
        "sent": int(find(r"^BENCH_SENT (\d+)")),
        "non_2xx": int(find(r"Non-2xx or 3xx responses: (\d+)", "0")),
        "socket_errors": dict(  # wrk prints the line only when there are errors
            zip(("connect", "read", "write", "timeout"), map(int, errors.groups() if errors else "0000"), strict=True)
        ),
    }


def wrk(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = [
        "taskset",
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, math.ceil(seconds))}s",
        "--latency",
    ]
    cmd += ["--timeout", "10s", "-s", str(LUA), target.url]
    env = {**os.environ, "BENCH_KEY": target.key, "BENCH_BODY": target.body(stream=False).decode()}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    result = parse_wrk(proc.stdout)
    if result["non_2xx"]:
        raise BenchError(f"{target.name} c={concurrency}: {result['non_2xx']} non-2xx responses:\n{proc.stdout}")
    if any(result["socket_errors"].values()):
        print(f"  warning: socket errors {result['socket_errors']}", file=sys.stderr)
    return result


# ------------------------------------------------------------------------------------------------ streaming


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list, in ms with 3 decimals."""
    return round(values[max(0, math.ceil(q / 100 * len(values)) - 1)], 3) if values else math.nan


def has_content(line: bytes) -> bool:
    if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
        return False
    choices = orjson.loads(line[5:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def stream_once(session: aiohttp.ClientSession, target: Target, body: bytes) -> tuple[float, float]:
    """One streaming request: (ms to first content event, ms to end of stream)."""
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
    start = time.perf_counter()
    ttft = math.nan
    async with session.post(target.url, data=body, headers=headers) as resp:
        if resp.status != 200:
            raise BenchError(f"{target.name}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for line in resp.content:
            if has_content(line):
                ttft = (time.perf_counter() - start) * 1000
                break
        rest = await resp.content.read()
    total = (time.perf_counter() - start) * 1000
    if math.isnan(ttft) or not rest.rstrip().endswith(b"data: [DONE]"):
        raise BenchError(f"{target.name}: stream without content or without [DONE]: ...{rest[-200:]!r}")
    return ttft, total


async def stream_load(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    """`concurrency` workers send streaming requests back to back until `seconds` have passed."""
    body = target.body(stream=True)
    ttfts: list[float] = []
    totals: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    ttft, total = await stream_once(session, target, body)
                except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                ttfts.append(ttft)
                totals.append(total)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    if errors:
        raise BenchError(f"{target.name} c={concurrency}: {len(errors)} failed streams, first: {errors[0]}")
    ttfts.sort()
    totals.sort()
    return {
        "rps": round(len(totals) / elapsed, 2),
        "requests": len(totals),
        "sent": len(totals),  # every stream started also completed (the workers stop only between requests)
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "total_p50_ms": percentile(totals, 50),
        "total_p99_ms": percentile(totals, 99),
    }


def run_stream(target: Target, concurrency: int, seconds: float) -> dict[str, Any]:
    return run_async(stream_load(target, concurrency, seconds))


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def paced_load(target: Target, text: str, requests: int) -> dict[str, Any]:
    """`requests` paced streams one after the other: time to first token, p50 and p99."""
    body = target.body(stream=True, prompt="echo: " + text)
    ttfts: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(requests):
            ttft, _total = await stream_once(session, target, body)
            ttfts.append(ttft)
    ttfts.sort()
    return {"requests": requests, "ttft_p50_ms": percentile(ttfts, 50), "ttft_p99_ms": percentile(ttfts, 99)}


# ------------------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return {
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout),
        "cpu": model[1].strip() if model else platform.processor() or "unknown",
        "python": platform.python_version(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split(" [")[0],
        "commit": commit.stdout.strip() or "unknown",
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def report(res: dict[str, Any]) -> str:
    m, s, a = res["machine"], res["settings"], res["audit"]
    out = [
        "# Sluicegate overhead benchmark",
        "",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; {m['wrk']}; commit {m['commit']}",
        f"- gateway on core {GATEWAY_CORE}; upstream, wrk and streaming client on core {CLIENT_CORE}",
        f"- {s['duration_s']:g} s per run after {s['warmup_s']:g} s warm-up; latencies in ms; "
        "TTFT = first SSE event with non-empty delta content",
        f"- audit.durability: {s['durability']}; prompt {len(PROMPT)} characters, echoed back as the answer",
        f"- gateway code: {s['gateway_source']}",
    ]
    sections = [
        (
            "Non-streaming chat (wrk)",
            ["conc", "target", "req/s", "p50", "p99", "requests", "CPU ms/call"],
            "wrk",
            ["concurrency", "target", "rps", "p50_ms", "p99_ms", "requests", "cpu_ms_per_request"],
        ),
        (
            "Streaming chat (aiohttp client)",
            ["conc", "target", "req/s", "TTFT p50", "TTFT p99", "total p50", "total p99", "requests"],
            "stream",
            ["concurrency", "target", "rps", "ttft_p50_ms", "ttft_p99_ms", "total_p50_ms", "total_p99_ms", "requests"],
        ),
        (
            "Guards: regex + pii + secrets on input and output (guarded vs the same gateway unguarded)",
            ["mode", "conc", "rps guarded/unguarded", "CPU ms/call unguarded", "CPU ms/call guarded", "CPU ratio"],
            "guards",
            ["mode", "concurrency", "rps_ratio", "cpu_ms_unguarded", "cpu_ms_guarded", "cpu_ratio"],
        ),
        (
            f"Paced streams ({PACED_INTERVAL_MS} ms between events), one at a time: time to first token",
            ["text", "target", "requests", "TTFT p50", "TTFT p99", "guarded - unguarded p50"],
            "paced",
            ["text", "target", "requests", "ttft_p50_ms", "ttft_p99_ms", "guards_p50_ms"],
        ),
        (
            "Added by the gateway (vs direct), and by its stages (vs the floor: a bare pass-through)",
            [
                "mode",
                "conc",
                "added p50",
                "added p99",
                "floor +p50",
                "stages p50",
                "rps/direct",
                "rps/floor",
                "guards +p50",
                "rps guarded/gateway",
            ],
            "overhead",
            [
                "mode",
                "concurrency",
                "added_p50_ms",
                "added_p99_ms",
                "floor_added_p50_ms",
                "stages_p50_ms",
                "rps_ratio",
                "rps_vs_floor",
                "guards_p50_ms",
                "rps_guarded_vs_gateway",
            ],
        ),
    ]
    for title, headers, key, cols in sections:
        out += ["", f"## {title}", "", table(headers, [[r.get(c, "") for c in cols] for r in res[key]])]
    out += [
        "",
        f"Audit: {a['rows']} rows; {a['expected_min']} requests completed via the gateway, {a['expected_max']} sent "
        f"(wrk's in flight at stop: {a['expected_max'] - a['expected_min']}); rows - completed = {a['difference']}; "
        f"{'OK' if a['ok'] else 'MISMATCH'}. Outcomes: {a['outcomes']}",
    ]
    return "\n".join(out)


def overhead(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mode, items, p50, p99 in (
        ("non-stream", res["wrk"], "p50_ms", "p99_ms"),
        ("stream TTFT", res["stream"], "ttft_p50_ms", "ttft_p99_ms"),
        ("stream total", res["stream"], "total_p50_ms", "total_p99_ms"),
    ):
        by = {(r["target"], r["concurrency"]): r for r in items}
        for c in sorted({r["concurrency"] for r in items}):
            d, f, g, gd = by[("direct", c)], by[("floor", c)], by[("gateway", c)], by[("guarded", c)]
            rows.append(
                {
                    "mode": mode,
                    "concurrency": c,
                    "added_p50_ms": round(g[p50] - d[p50], 3),
                    "added_p99_ms": round(g[p99] - d[p99], 3),
                    "floor_added_p50_ms": round(f[p50] - d[p50], 3),
                    "stages_p50_ms": round(g[p50] - f[p50], 3),
                    "rps_ratio": round(g["rps"] / d["rps"], 3) if d["rps"] else math.nan,
                    "rps_vs_floor": round(g["rps"] / f["rps"], 3) if f["rps"] else math.nan,
                    "guards_p50_ms": round(gd[p50] - g[p50], 3),
                    "rps_guarded_vs_gateway": round(gd["rps"] / g["rps"], 3) if g["rps"] else math.nan,
                }
            )
    return rows


def guard_costs(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per mode and concurrency: guarded throughput and CPU per call against the unguarded gateway."""
    rows = []
    for mode in ("wrk", "stream"):
        by = {(r["target"], r["concurrency"]): r for r in res[mode]}
        for c in sorted({r["concurrency"] for r in res[mode]}):
            g, gd = by[("gateway", c)], by[("guarded", c)]
            cpu_g, cpu_gd = g.get("cpu_ms_per_request", math.nan), gd.get("cpu_ms_per_request", math.nan)
            rows.append(
                {
                    "mode": "non-stream" if mode == "wrk" else "stream",
                    "concurrency": c,
                    "rps_ratio": round(gd["rps"] / g["rps"], 3) if g["rps"] else math.nan,
                    "cpu_ms_unguarded": cpu_g,
                    "cpu_ms_guarded": cpu_gd,
                    "cpu_ratio": round(cpu_gd / cpu_g, 3) if cpu_g else math.nan,
                }
            )
    return rows


def count_audit(db: Path, gateway_url: str) -> tuple[int, dict[str, int]]:
    time.sleep(1.0)  # the audit writer batches; then wait until it reports nothing pending
    for _ in range(100):
        with urllib.request.urlopen(gateway_url + "/readyz", timeout=5) as resp:
            if json.loads(resp.read()).get("audit_pending") == 0:
                break
        time.sleep(0.1)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT stream, status, outcome, COUNT(*) FROM audit_events GROUP BY 1, 2, 3").fetchall()
    outcomes = {f"{'stream' if st else 'json'} {status} {outcome}": n for st, status, outcome, n in rows}
    return sum(outcomes.values()), outcomes


# ------------------------------------------------------------------------------------------------ main


def bench(args: argparse.Namespace, tmp: Path, info: dict[str, Any]) -> dict[str, Any]:
    ports: list[int] = []
    while len(ports) < 4:
        port = free_port()
        if port not in ports:
            ports.append(port)
    up_port, paced_port, gw_port, floor_port = ports
    config = tmp / "sluicegate.yaml"
    text = CONFIG.format(port=up_port, paced_port=paced_port)
    if args.durability != "queued":  # the default is left out, so older commits read the config too
        text += f"audit:\n  durability: {args.durability}\n"
    config.write_text(text)
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    gw_env = dict(env)
    if args.gateway_source is not None:
        # `import sluicegate` in the gateway finds this tree first (the other processes keep ours).
        gw_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.gateway_source), env.get("PYTHONPATH")]))
    sg = sluicegate_bin()
    keys = {}
    for consumer in ("bench", "bench-guarded"):
        created = subprocess.run(
            [sg, "keys", "create", "--consumer", consumer, "--config", str(config)],
            env=gw_env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        keys[consumer] = created.stdout.strip().splitlines()[-1]
    up_cmd = ["taskset", "-c", CLIENT_CORE, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    paced_cmd = ["taskset", "-c", CLIENT_CORE, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(paced_port)]
    paced_cmd += ["--chunk-interval-ms", str(PACED_INTERVAL_MS)]
    gw_cmd = ["taskset", "-c", GATEWAY_CORE, sg, "serve", "--config", str(config), "--host", "127.0.0.1"]
    gw_cmd += ["--port", str(gw_port), "--log-level", "WARNING"]
    up_base, gw_base = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    paced_base, floor_base = f"http://127.0.0.1:{paced_port}", f"http://127.0.0.1:{floor_port}"
    floor_cmd = ["taskset", "-c", GATEWAY_CORE, sys.executable, str(BENCH_DIR / "floor_proxy.py"), up_base]
    floor_cmd.append(str(floor_port))
    res: dict[str, Any] = {
        "machine": info,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "durability": args.durability,
            "prompt_chars": len(PROMPT),
            "paced_interval_ms": PACED_INTERVAL_MS,
            "paced_requests": args.paced_requests,
            "gateway_source": str(args.gateway_source or "installed package"),
        },
        "wrk": [],
        "stream": [],
        "paced": [],
    }
    with (
        running("upstream", up_cmd, env, tmp) as up_proc,
        running("paced", paced_cmd, env, tmp) as paced_proc,
        running("gateway", gw_cmd, gw_env, tmp) as gw_proc,
        running("floor", floor_cmd, env, tmp) as floor_proc,
    ):
        targets = [
            Target("direct", up_base, "gpt-4o-mini", "sk-bench-direct"),
            Target("floor", floor_base, "gpt-4o-mini", "sk-bench-direct", floor_proc.pid),
            Target("gateway", gw_base, "bench-chat", keys["bench"], gw_proc.pid),
            # the same gateway, for a consumer with regex + pii + secrets guards on input and output
            Target("guarded", gw_base, "bench-chat", keys["bench-guarded"], gw_proc.pid),
        ]
        paced_targets = [
            Target("direct", paced_base, "gpt-4o-mini", "sk-bench-direct"),
            Target("gateway", gw_base, "bench-paced", keys["bench"]),
            Target("guarded", gw_base, "bench-paced", keys["bench-guarded"]),
        ]
        wait_ready("upstream", up_base + "/v1/models", up_proc, tmp)
        wait_ready("paced", paced_base + "/v1/models", paced_proc, tmp)
        wait_ready("gateway", gw_base + "/readyz", gw_proc, tmp)
        wait_ready("floor", floor_base + "/healthz", floor_proc, tmp)
        for target in targets:
            smoke_test(target)
        completed, sent = 2, 2  # the smoke requests of both gateway consumers
        for mode, measure in (("wrk", wrk), ("stream", run_stream)):
            for c in args.concurrency:
                for target in targets:
                    print(f"{mode:<7} {target.name:<8} c={c:<3}", end=" ", flush=True, file=sys.stderr)
                    warm = measure(target, c, args.warmup)
                    cpu = cpu_seconds(target.pid)
                    r = {"target": target.name, "concurrency": c, **measure(target, c, args.duration)}
                    if target.pid is not None and r["requests"]:
                        r["cpu_ms_per_request"] = round((cpu_seconds(target.pid) - cpu) * 1000 / r["requests"], 3)
                    r.update(warmup_requests=warm["requests"], warmup_sent=warm["sent"])
                    res[mode].append(r)
                    p50 = r.get("p50_ms", r.get("ttft_p50_ms"))
                    print(f"{r['rps']:>9.1f} req/s  p50{' TTFT' * (mode == 'stream')} {p50:.3f} ms", file=sys.stderr)
                    if target.name in ("gateway", "guarded"):
                        completed += warm["requests"] + r["requests"]
                        sent += warm["sent"] + r["sent"]
        for name, paced_text in PACED.items():
            unguarded = math.nan
            for target in paced_targets:
                print(f"paced   {target.name:<8} {name:<6}", end=" ", flush=True, file=sys.stderr)
                r = {
                    "text": name,
                    "target": target.name,
                    **run_async(paced_load(target, paced_text, args.paced_requests)),
                }
                if target.name == "gateway":
                    unguarded = r["ttft_p50_ms"]
                if target.name == "guarded":
                    r["guards_p50_ms"] = round(r["ttft_p50_ms"] - unguarded, 3)
                res["paced"].append(r)
                print(f"TTFT p50 {r['ttft_p50_ms']:.3f} ms", file=sys.stderr)
                if target.name in ("gateway", "guarded"):
                    completed += r["requests"]
                    sent += r["requests"]
        rows, outcomes = count_audit(tmp / "data" / "sluicegate.db", gw_base)
        if gw_proc.poll() is not None:
            raise BenchError(f"the gateway exited with {gw_proc.returncode} during the run")
    res["overhead"] = overhead(res)
    res["guards"] = guard_costs(res)
    ok = completed <= rows <= sent  # wrk's requests in flight at its stop may or may not have reached the gateway
    res["audit"] = dict(rows=rows, expected_min=completed, expected_max=sent, difference=rows - completed, ok=ok)
    res["audit"]["outcomes"] = outcomes
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds per measured run (default 10; wrk rounds up to whole seconds)",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run (default 2)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    parser.add_argument("--quick", action="store_true", help="3 s runs after 1 s warm-up")
    parser.add_argument(
        "--durability",
        choices=("queued", "before_response"),
        default="queued",
        help="the gateway's audit.durability (default queued; before_response commits each event first)",
    )
    parser.add_argument("--paced-requests", type=int, default=20, help="paced streams per text and target (default 20)")
    parser.add_argument(
        "--gateway-source",
        type=Path,
        help="run the gateway from the `sluicegate` package in this folder (to compare a commit: "
        "`git archive <commit> sluicegate | tar -x -C DIR`); the default is the installed package",
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.gateway_source is not None:
        args.gateway_source = args.gateway_source.resolve()
        if not (args.gateway_source / "sluicegate" / "__init__.py").exists():
            print(f"error: {args.gateway_source} holds no sluicegate package", file=sys.stderr)
            return 2
    if args.quick:
        args.duration, args.warmup, args.paced_requests = 3.0, 1.0, 8
    if len(os.sched_getaffinity(0)) < 2:
        print("error: the benchmark pins the gateway and the load to different cores; it needs 2", file=sys.stderr)
        return 2
    info = machine()  # before pinning: nproc honours the affinity mask
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this process is the streaming client
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind (and stop the servers) on SIGTERM too
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as tmp:
        try:
            res = bench(args, Path(tmp), info)
        except (BenchError, subprocess.CalledProcessError) as exc:
            print(f"\nBENCHMARK FAILED: {exc}\n{getattr(exc, 'stderr', None) or ''}", file=sys.stderr)
            for log in sorted(Path(tmp).glob("*.log")):
                print(f"--- last lines of {log.name}:\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(f"\nJSON: {args.out}", file=sys.stderr)
    if not res["audit"]["ok"]:
        print("AUDIT MISMATCH: audit rows outside [completed, sent]", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
