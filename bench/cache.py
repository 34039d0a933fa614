"""What the response cache costs and saves: a miss against no cache, a hit against the gateway's
own floor, in interleaved rounds in one run, as `bench/observability.py` does.

Targets, each its own process pinned to the gateway core (`--targets` picks some):
- `floor`: `floor_proxy.py`, a bare pass-through to the fake upstream;
- `local`: the gateway's own floor without an upstream: the defaults (cache off) answering
  Anthropic `POST /v1/messages/count_tokens` for a model on an OpenAI-type provider, which the
  gateway answers itself (`pipeline._send_local`) after every stage a hit also passes (identity,
  access, parse, limits, guards, router; audit, accounting). Same 512-character prompt as `hit`;
  it also tokenises the prompt, which a hit does not: that time is measured alone and shown;
- `off`: the defaults with `cache.enabled: false`, every request unique (the miss baseline);
- `miss`: `cache.enabled: true` (in-process, `memory_max_bytes` 1 MiB so eviction runs), the same
  unique requests: every call computes its key, misses and stores its answer;
- `hit`: as `miss`, one fixed request stored before measuring: every call is an exact hit;
- `redis-hit`: `cache.backend: redis`, a `redis-server` on a free port pinned with the clients;
- `semantic-miss`: `cache.default.semantic: true`, unique prompts: every call is embedded, misses
  and is stored with its vector;
- `semantic-hit`: the same gateway config, requests rotating among reworded variants of one
  stored question: exact misses that hit semantically (embed, search, entry).
Each response's `x-cache` is counted by wrk in the warm-up runs (and in the measured runs of the
semantic targets, whose hit ratio is reported). Non-streaming chat through wrk (`chat_unique.lua`;
same pinning as `bench/run.py`); CPU per call from /proc. The local embedder's time per text is
measured alone first (model only, and `embed()` at concurrency 1 and 16, which batches).
`--instructions N` instead counts CPU instructions per call with cachegrind (as
`bench/instructions.py` does) for `off`, `miss`, `hit` and `local`, with unique prompts for the
first two: a figure this noisy machine's wall-clock runs cannot give for a few per cent.

    .venv/bin/python bench/cache.py [--duration 10] [--rounds 3] [--concurrency 1,16] [--targets ...]
    .venv/bin/python bench/cache.py --instructions 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from run import (
    BENCH_DIR,
    CLIENT_CORE,
    CONFIG,
    GATEWAY_CORE,
    PROMPT,
    BenchError,
    cpu_seconds,
    free_port,
    machine,
    parse_wrk,
    running,
    sluicegate_bin,
    table,
    wait_ready,
)

LUA = BENCH_DIR / "chat_unique.lua"
TARGETS = ("floor", "local", "off", "miss", "hit", "redis-hit", "semantic-miss", "semantic-hit")
SEMANTIC_TARGETS = ("semantic-miss", "semantic-hit")
_CACHE_ON = "cache:\n  enabled: true\n  memory_max_bytes: 1048576\n"
#: each gateway's config, added to the benchmark's base config
CONFIGS = {
    "local": "",
    "off": "cache: {enabled: false}\n",
    "miss": _CACHE_ON,
    "hit": _CACHE_ON,
    "redis-hit": "cache:\n  enabled: true\n  backend: redis\n  redis: {url: 'redis://127.0.0.1:{redis}/0'}\n",
    "semantic-miss": _CACHE_ON + "  default: {semantic: true}\n",
    "semantic-hit": _CACHE_ON + "  default: {semantic: true}\n",
}
#: a unique prompt: the Lua script writes a per-request nonce for @@N@@; the text is `PROMPT`'s
UNIQUE_PROMPT = "echo: [@@N@@] " + PROMPT[6:]
#: the stored question of `semantic-hit`, and rewordings of it that its threshold (0.94) accepts
STORED_QUESTION = "How do I reverse a string in Python?"
REWORDED = (
    "How can I reverse a string in Python?",
    "What's the way to reverse a string in Python?",
    "In Python, how do I reverse a string?",
    "What is the best way to reverse a string in Python?",
)


def chat(prompt: str, model: str = "bench-chat") -> str:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).decode()


class Target:
    """One endpoint under test: a URL, the bodies sent in turn, and the process serving it."""

    def __init__(self, name: str, url: str, bodies: list[str], key: str, pid: int | None) -> None:
        self.name, self.url, self.bodies, self.key, self.pid = name, url, bodies, key, pid
        #: the answers carry `x-cache` (a gateway with the cache on)
        self.cached = name not in ("floor", "local", "off")


def build_targets(name: str, base: str, key: str, pid: int) -> Target:
    if name == "floor":
        return Target(name, base + "/v1/chat/completions", [chat(PROMPT, "gpt-4o-mini")], "sk-bench-direct", pid)
    if name == "local":
        return Target(name, base + "/v1/messages/count_tokens", [chat(PROMPT)], key, pid)
    if name in ("off", "miss", "semantic-miss"):
        return Target(name, base + "/v1/chat/completions", [chat(UNIQUE_PROMPT)], key, pid)
    if name == "semantic-hit":
        return Target(name, base + "/v1/chat/completions", [chat(q) for q in REWORDED], key, pid)
    return Target(name, base + "/v1/chat/completions", [chat(PROMPT)], key, pid)


# ------------------------------------------------------------------------------------------------ wrk


def wrk(target: Target, concurrency: int, seconds: float, count: bool) -> dict[str, Any]:
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
    cmd += ["--latency", "--timeout", "10s", "-s", str(LUA), target.url]
    env = {
        **os.environ,
        "BENCH_KEY": target.key,
        "BENCH_BODIES": "\n".join(target.bodies),
        "BENCH_NONCE": uuid.uuid4().hex[:10],
        "BENCH_COUNT": "1" if count else "0",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    result = parse_wrk(proc.stdout)
    if result["non_2xx"]:
        raise BenchError(f"{target.name} c={concurrency}: {result['non_2xx']} non-2xx responses:\n{proc.stdout}")
    if any(result["socket_errors"].values()):
        print(f"  warning: socket errors {result['socket_errors']}", file=sys.stderr)
    verdicts = re.search(r"^BENCH_CACHE (.+)$", proc.stdout, re.MULTILINE)
    if verdicts:
        result["x_cache"] = {k: int(v) for k, v in (kv.split("=") for kv in verdicts[1].split())}
    return result


def measure(target: Target, c: int, duration: float, warmup: float) -> dict[str, Any]:
    warm = wrk(target, c, warmup, count=target.cached)
    expected = {"hit": "hit", "redis-hit": "hit", "miss": "miss", "semantic-miss": "miss"}.get(target.name)
    seen = warm.get("x_cache", {})
    if expected is not None and seen.get(expected, 0) < warm["requests"]:
        raise BenchError(f"{target.name}: the warm-up's answers were not all {expected}: {seen}")
    semantic = target.name in SEMANTIC_TARGETS
    cpu = cpu_seconds(target.pid)
    r = wrk(target, c, duration, count=semantic)  # counting costs wrk time: only where it is ms-scale
    if target.pid is not None and r["requests"]:
        r["cpu_ms_per_request"] = round((cpu_seconds(target.pid) - cpu) * 1000 / r["requests"], 4)
    r["warmup_x_cache"] = seen
    return r


# ------------------------------------------------------------------------------------------------ checks


def post(url: str, key: str, body: str) -> tuple[int, str | None]:
    """One request: (status, its `x-cache`, with `+semantic` for a semantic hit)."""
    import httpx

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    resp = httpx.post(url, content=body, headers=headers, timeout=30)
    verdict = resp.headers.get("x-cache")
    if verdict == "hit" and "x-cache-similarity" in resp.headers:
        verdict += "+semantic"
    return resp.status_code, verdict


def prepare(target: Target) -> None:
    """Smoke-test a target; store what a hit target hits, and check that it does."""
    if target.name == "semantic-hit":
        # Until the model is loaded (in the background, from startup) a lookup misses and its answer
        # is stored under its exact key only: wait for it with probes in contexts of their own.
        deadline = time.monotonic() + 120
        for attempt in range(10**6):
            system = {"role": "system", "content": f"probe {uuid.uuid4().hex}"}
            bodies = [
                orjson.dumps({"model": "bench-chat", "messages": [system, {"role": "user", "content": q}]}).decode()
                for q in (STORED_QUESTION, REWORDED[0])
            ]
            post(target.url, target.key, bodies[0])
            time.sleep(0.2)  # the entry and its vector are written in the background
            if post(target.url, target.key, bodies[1])[1] == "hit+semantic":
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{target.name}: no semantic hit after {attempt + 1} probes")
            time.sleep(1)
        first = post(target.url, target.key, chat(STORED_QUESTION))[1]
        time.sleep(0.2)
        verdicts = [post(target.url, target.key, body)[1] for body in target.bodies]
        print(f"  {target.name}: the stored question was a {first}; rewordings: {verdicts}", file=sys.stderr)
        if first != "miss" or any(v != "hit+semantic" for v in verdicts):
            raise BenchError(f"{target.name}: rewordings not all semantic hits: {verdicts}")
        return
    body = target.bodies[0].replace("@@N@@", "smoke-" + uuid.uuid4().hex[:8])
    status, first = post(target.url, target.key, body)
    if status != 200:
        raise BenchError(f"{target.name}: HTTP {status} on the smoke request")
    if target.name in ("hit", "redis-hit"):
        time.sleep(0.2)
        status, again = post(target.url, target.key, body)
        if (first, again) != ("miss", "hit"):
            raise BenchError(f"{target.name}: expected miss then hit, got {first}, {again}")


# ------------------------------------------------------------------------------------------------ embedding


def embed_timing(texts: dict[str, str], calls: int) -> list[dict[str, Any]]:
    """The local embedder's time per text on the gateway core: the model alone (batch 1), and
    `embed()` (its batcher included) one call at a time and 16 at a time."""
    from sluicegate.cache.embed import LocalEmbedder

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return round(values[max(0, int(len(values) * q / 100 + 0.999999) - 1)], 3)

    rows = []
    embedder = LocalEmbedder()
    try:
        for label, text in texts.items():
            embedder.embed_many([text])  # loads the model
            model_ms = []
            for _ in range(calls):
                start = time.perf_counter()
                embedder.embed_many([text])
                model_ms.append((time.perf_counter() - start) * 1000)
            rows.append({"text": label, "mode": "model, batch 1", "concurrency": 1, **_stats(model_ms, pct)})

            async def load(concurrency: int, text: str = text) -> tuple[list[float], float, int]:
                times: list[float] = []
                timeouts = 0

                async def worker() -> None:
                    nonlocal timeouts
                    for _ in range(max(1, calls // concurrency)):
                        start = time.perf_counter()
                        if await embedder.embed(text) is None:
                            timeouts += 1  # past `timeout_ms` (250): the gateway's lookup would miss
                        times.append((time.perf_counter() - start) * 1000)

                begin = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return times, time.perf_counter() - begin, timeouts

            for concurrency in (1, 16):
                times, elapsed, timeouts = asyncio.run(load(concurrency))
                row = {"text": label, "mode": "embed()", "concurrency": concurrency, **_stats(times, pct)}
                row["per_s"] = round((len(times) - timeouts) / elapsed, 1)
                row["timeouts"] = timeouts
                rows.append(row)
    finally:
        asyncio.run(embedder.close())
    return rows


def _stats(values: list[float], pct: Callable[[list[float], float], float]) -> dict[str, Any]:
    return {"calls": len(values), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99)}


def tokenizer_us(text: str) -> float:
    """What `count_tokens` (the `local` target) spends tokenising the prompt, per call, in us."""
    from sluicegate import tokens

    tokens.count_tokens([text], "gpt-4o-mini")
    start = time.perf_counter()
    for _ in range(500):
        tokens.count_tokens([text], "gpt-4o-mini")
    return round((time.perf_counter() - start) / 500 * 1e6, 1)


# ------------------------------------------------------------------------------------------------ the run


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    names = [n for n in TARGETS if n in args.targets]
    semantic = [n for n in names if n in SEMANTIC_TARGETS]
    if semantic and not _imports("onnxruntime"):
        print("onnxruntime does not import: the semantic targets are skipped", file=sys.stderr)
        names = [n for n in names if n not in SEMANTIC_TARGETS]
    redis_bin = shutil.which("redis-server")
    if "redis-hit" in names and redis_bin is None:
        print("no redis-server: redis-hit is skipped", file=sys.stderr)
        names.remove("redis-hit")
    res: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"targets": names}, "rows": []}
    os.sched_setaffinity(0, {int(GATEWAY_CORE)})  # timed alone, before any server runs
    res["tokenizer_us"] = tokenizer_us(PROMPT)
    if any(n in SEMANTIC_TARGETS for n in names):
        print("timing the local embedder", file=sys.stderr)
        texts = {"question": STORED_QUESTION, "512 chars": PROMPT}
        res["embed"] = embed_timing(texts, args.embed_calls)
    os.sched_setaffinity(0, {int(CLIENT_CORE)})
    up_port, paced_port, floor_port, redis_port = (free_port() for _ in range(4))
    sg = sluicegate_bin()
    base = CONFIG.format(port=up_port, paced_port=paced_port)
    configs = {}
    for name in names:
        if name != "floor":
            path = configs[name] = tmp / f"{name}.yaml"
            path.write_text(base + CONFIGS[name].replace("{redis}", str(redis_port)))
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(tmp / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    config = tmp / "keys.yaml"
    config.write_text(base)
    created = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(config)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    pin, client_pin = ["taskset", "-c", GATEWAY_CORE], ["taskset", "-c", CLIENT_CORE]
    up_cmd = [*client_pin, sg, "mock-upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    floor_cmd = [*pin, sys.executable, str(BENCH_DIR / "floor_proxy.py"), f"http://127.0.0.1:{up_port}"]
    floor_cmd.append(str(floor_port))
    with contextlib.ExitStack() as stack:
        up_proc = stack.enter_context(running("upstream", up_cmd, env, tmp))
        wait_ready("upstream", f"http://127.0.0.1:{up_port}/v1/models", up_proc, tmp)
        if "redis-hit" in names:
            assert redis_bin is not None
            redis_cmd = [*client_pin, redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
            redis_cmd += ["--appendonly", "no", "--dir", str(tmp)]
            stack.enter_context(running("redis", redis_cmd, env, tmp))
        targets = []
        for name in names:
            if name == "floor":
                proc = stack.enter_context(running("floor", floor_cmd, env, tmp))
                url = f"http://127.0.0.1:{floor_port}"
                wait_ready("floor", url + "/healthz", proc, tmp)
            else:
                port = free_port()
                cmd = [*pin, sg, "serve", "--config", str(configs[name]), "--port", str(port)]
                proc = stack.enter_context(running(name, [*cmd, "--log-level", "WARNING"], env, tmp))
                url = f"http://127.0.0.1:{port}"
                wait_ready(name, url + "/readyz", proc, tmp)
            targets.append(build_targets(name, url, key, proc.pid))
        for target in targets:
            prepare(target)
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for target in targets:
                    if target.name in SEMANTIC_TARGETS and rnd >= args.semantic_rounds:
                        continue
                    print(f"round {rnd} {target.name:<13} c={c:<3}", end=" ", flush=True, file=sys.stderr)
                    r = {"round": rnd, "target": target.name, "concurrency": c}
                    r.update(measure(target, c, args.duration, args.warmup))
                    res["rows"].append(r)
                    extra = f"  x-cache {r['x_cache']}" if "x_cache" in r else ""
                    print(f"{r['rps']:>8.1f} req/s  p50 {r['p50_ms']:.3f} ms{extra}", file=sys.stderr)
    return res


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ instructions


def count_instructions(name: str, calls: int, tmp: Path) -> int:
    """Instructions (user space) of a gateway for `name` that served `calls` calls one at a time
    after one warm-up call, from its start to its stop, under cachegrind."""
    up_port, paced_port, gw_port = free_port(), free_port(), free_port()
    work = tmp / f"{name}-{calls}"
    work.mkdir()
    config = work / "sluicegate.yaml"
    config.write_text(CONFIG.format(port=up_port, paced_port=paced_port) + CONFIGS[name])
    env = {
        **os.environ,
        "SLUICEGATE_DATA_DIR": str(work / "data"),
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "SLUICEGATE_WORKERS": "1",
    }
    sg = sluicegate_bin()
    key = subprocess.run(
        [sg, "keys", "create", "--consumer", "bench", "--config", str(config)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    out = work / "cachegrind.out"
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", sys.executable, sg]
    cmd += ["serve", "--config", str(config), "--port", str(gw_port), "--log-level", "WARNING"]
    path = "/v1/messages/count_tokens" if name == "local" else "/v1/chat/completions"
    unique = name in ("off", "miss")
    with (
        running(f"upstream-{name}", [sg, "mock-upstream", "--port", str(up_port)], env, work) as upstream,
        running(f"gateway-{name}", cmd, env, work) as gateway,
    ):
        wait_ready(f"upstream-{name}", f"http://127.0.0.1:{up_port}/v1/models", upstream, work)
        wait_ready(f"gateway-{name}", f"http://127.0.0.1:{gw_port}/readyz", gateway, work, timeout=600)
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=120)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for i in range(calls + 1):
            body = chat(UNIQUE_PROMPT.replace("@@N@@", f"{calls}-{i}") if unique else PROMPT)
            conn.request("POST", path, body.encode(), headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise BenchError(f"{name}: the gateway answered {response.status}")
            want = {"miss": "miss", "hit": "hit" if i else "miss"}.get(name)
            if want is not None and response.getheader("x-cache") != want:
                raise BenchError(f"{name}: call {i} was {response.getheader('x-cache')}, not {want}")
        conn.close()
        time.sleep(1.0)  # the audit writer commits the last batch
        gateway.send_signal(signal.SIGINT)
        gateway.wait(180)
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise BenchError("cachegrind wrote no summary")


def instructions(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    names = [n for n in ("off", "miss", "hit", "local") if n in args.targets]
    res: dict[str, Any] = {"machine": machine(), "calls": args.instructions, "per_call": {}}
    for name in names:
        print(f"cachegrind {name}: idle ...", end=" ", flush=True, file=sys.stderr)
        idle = count_instructions(name, 0, tmp)
        print("served ...", end=" ", flush=True, file=sys.stderr)
        served = count_instructions(name, args.instructions, tmp)
        res["per_call"][name] = round((served - idle) / args.instructions)
        print(f"{res['per_call'][name]:,} per call", file=sys.stderr)
    return res


# ------------------------------------------------------------------------------------------------ report


def summary(res: dict[str, Any]) -> str:
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by.setdefault((r["target"], r["concurrency"]), []).append(r)
    names = [n for n in TARGETS if any(k[0] == n for k in by)]
    concs = sorted({k[1] for k in by})

    def med(name: str, field: str, c: int) -> float:
        values = [r[field] for r in by.get((name, c), []) if field in r]
        return statistics.median(values) if values else float("nan")

    m = res["machine"]
    s = res["settings"]
    out = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; {m['wrk']}; commit {m['commit']}. "
        f"{s['rounds']} rounds ({min(s['rounds'], s['semantic_rounds'])} for the semantic targets) "
        f"of {s['duration']:g} s after {s['warmup']:g} s warm-up; medians over rounds.",
        "",
    ]
    rows = []
    for name in names:
        row: list[Any] = [name, len(by.get((name, concs[0]), []))]
        for c in concs:
            row += [f"{med(name, 'rps', c):.0f}"]
            if c == concs[0]:
                row += [f"{med(name, 'p50_ms', c):.3f}", f"{med(name, 'p99_ms', c):.3f}"]
            row += [f"{med(name, 'cpu_ms_per_request', c):.4f}"]
        rows.append(row)
    headers = ["target", "rounds"]
    for c in concs:
        headers += [f"req/s c={c}"] + ([f"p50 ms c={c}", f"p99 ms c={c}"] if c == concs[0] else [])
        headers += [f"CPU ms/call c={c}"]
    out.append(table(headers, rows))
    for name in SEMANTIC_TARGETS:
        for c in concs:
            seen: dict[str, int] = {}
            for r in by.get((name, c), []):
                for k, v in r.get("x_cache", {}).items():
                    seen[k] = seen.get(k, 0) + v
            total = sum(v for k, v in seen.items() if k != "semantic")
            if total:
                ratio = seen.get("hit", 0) / total
                out.append(f"\n{name} c={c}: x-cache over the measured runs: {seen}; hit ratio {ratio:.3f}")
    out += ["", "Targets:", ""]
    lo = concs[0]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    checks = []
    if "hit" in names and "local" in names:
        diff = med("hit", "p50_ms", lo) - med("local", "p50_ms", lo)
        tok = res.get("tokenizer_us", 0) / 1000
        line = f"- exact hit p50 - local p50 at c={lo}: {diff:+.3f} ms (target <= 0.2 ms: {verdict(diff <= 0.2)})"
        line += f"; against local less its tokenizer ({tok:.3f} ms): {diff + tok:+.3f} ms"
        if "floor" in names:
            line += f"; hit p50 - floor p50: {med('hit', 'p50_ms', lo) - med('floor', 'p50_ms', lo):+.3f} ms"
        checks.append(line)
    if "hit" in names and "off" in names:
        parts = [f"c={c}: {med('hit', 'rps', c) / med('off', 'rps', c):.2f}x" for c in concs]
        ok = all(med("hit", "rps", c) / med("off", "rps", c) >= 1.5 for c in concs)
        checks.append(f"- hit / off throughput: {', '.join(parts)} (target >= 1.5x: {verdict(ok)})")
    if "miss" in names and "off" in names:
        parts = [f"c={c}: {med('miss', 'rps', c) / med('off', 'rps', c):.3f}" for c in concs]
        cpu = [
            f"c={c}: {med('miss', 'cpu_ms_per_request', c) / med('off', 'cpu_ms_per_request', c):.3f}" for c in concs
        ]
        ok = all(med("miss", "rps", c) / med("off", "rps", c) >= 0.95 for c in concs)
        checks.append(
            f"- miss / off throughput: {', '.join(parts)} (target >= 0.95: {verdict(ok)}); "
            f"CPU per call miss / off: {', '.join(cpu)}"
        )
    for name in ("redis-hit", *SEMANTIC_TARGETS):
        if name in names and "off" in names:
            parts = [f"c={c}: {med(name, 'rps', c) / med('off', 'rps', c):.2f}" for c in concs]
            checks.append(f"- {name} / off throughput: {', '.join(parts)}")
    out += checks
    if "tokenizer_us" in res:
        out.append(f"\n`local` tokenises the 512-character prompt: {res['tokenizer_us']} us per call (timed alone).")
    if res.get("embed"):
        out += ["", "Local embedder (all-MiniLM-L6-v2 int8), on the gateway core, alone:", ""]
        erows = [
            [e["text"], e["mode"], e["concurrency"], e["calls"], e["p50_ms"], e["p99_ms"], e.get("per_s", "-"),
             e.get("timeouts", "-")]
            for e in res["embed"]
        ]  # fmt: skip
        headers = ["text", "what", "concurrency", "calls", "p50 ms", "p99 ms", "vectors/s", "timed out"]
        out.append(table(headers, erows))
    return "\n".join(out)


def instructions_summary(res: dict[str, Any]) -> str:
    per = res["per_call"]
    lines = [f"CPU instructions per call (cachegrind, {res['calls']} calls one at a time, user space):", ""]
    lines.append(table(["target", "instructions/call"], [[n, f"{v:,}"] for n, v in per.items()]))
    if "off" in per and "miss" in per:
        ratio = per["miss"] / per["off"]
        lines.append(f"\n- miss / off: {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'})")
    if "hit" in per and "local" in per:
        lines.append(f"- hit / local: {per['hit'] / per['local']:.3f}")
    if "hit" in per and "off" in per:
        lines.append(f"- hit / off: {per['hit'] / per['off']:.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every target, interleaved (median shown)")
    parser.add_argument("--semantic-rounds", type=int, default=2, help="rounds that include the semantic targets")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGETS), help="comma-separated")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--embed-calls", type=int, default=200, help="texts embedded per embedder timing")
    parser.add_argument(
        "--instructions", type=int, default=0, metavar="N",
        help="count instructions per call over N calls (cachegrind) for off, miss, hit, local instead",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("error: the benchmark pins the gateway and the load to different cores; it needs 2", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind (and stop the servers) on SIGTERM too
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-cache-") as tmp:
        try:
            if args.instructions:
                res = instructions(args, Path(tmp))
                text = instructions_summary(res)
            else:
                res = bench(args, Path(tmp))
                text = summary(res)
        except (BenchError, subprocess.CalledProcessError) as exc:
            print(f"\nBENCHMARK FAILED: {exc}\n{getattr(exc, 'stderr', None) or ''}", file=sys.stderr)
            for log in sorted(Path(tmp).rglob("*.log")):
                print(f"--- last lines of {log.name}:\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; servers stopped", file=sys.stderr)
            return 130
    res["finished"] = stamp
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
