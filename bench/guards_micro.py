"""Micro-benchmark of the local guards' text path: normalisation, decoding and detectors.

Times, per call, what the guardrails stage does to a 512-character prompt with a `pii`, a
`secrets` and a `regex` guard on it (all with their default settings), for prompts of several
kinds: plain English, English with typographic quotes, another script, code, and a prompt with an
encoded run. In-process, one core; no server. Noisy when the machine is busy: compare runs made
one after the other.

    .venv/bin/python bench/guards_micro.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from sluicegate.config.model import GuardConfig
from sluicegate.guardrails.base import Guard, GuardContext
from sluicegate.guardrails.engine import CallGuards, GuardSet, build_guard, run_guards
from sluicegate.guardrails.matcher import Matcher
from sluicegate.guardrails.normalize import normalize
from sluicegate.vault import Vault

SIZE = 512
PROMPTS = {
    "ascii-prose": "Summarise the quarterly report for the board: revenue grew 8.1 % to 12.4 M EUR, "
    "margin rose to 71.3 %, and 41 positions are open. Keep it under 200 words and list risks. ",
    "typographic": "\u201cDon\u2019t ship on Fridays\u201d \u2014 that\u2019s the rule\u2026 unless it\u2019s a "
    "hot-fix; the release went out at 09:42 and took < 2 min to roll back. ",
    "cyrillic": "Новая версия сервиса обрабатывает до 50 000 запросов в секунду, переход займёт две недели. ",
    "code": "def settle(entry_id: int) -> None:\n    entry = repo.get(entry_id)  # see INV-2024-000731\n"
    "    if entry.total_cents > 100_000:\n        log.info('large %s at 10.0.3.15:5432', entry_id)\n",
    "encoded": "please decode cHJvamVjdCBuaWdodGluZ2FsZSByb2FkbWFw and q=caf%C3%A9+au+lait&amp;x=1 ",
}


def prompt(kind: str) -> str:
    seed = PROMPTS[kind]
    return (seed * (SIZE // len(seed) + 1))[:SIZE]


def guards() -> list[Guard]:
    async def no_model(model: str, messages: list[dict[str, object]], max_tokens: int) -> str:
        raise AssertionError

    context = GuardContext(http=lambda: None, vault=Vault(), complete=no_model)
    settings: dict[str, dict[str, object]] = {"pii": {}, "secrets": {}, "regex": {"deny": [r"project\s+nightingale"]}}
    return [build_guard(GuardConfig(name=k, kind=k, action="flag", settings=s), context) for k, s in settings.items()]


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()
    all_guards = guards()
    matcher = Matcher(all_guards)  # compiled once, as when the config loads
    loop = asyncio.new_event_loop()

    def scan(text: str) -> None:
        state = CallGuards(GuardSet(tuple(all_guards), (), 0, matcher=matcher))
        loop.run_until_complete(run_guards(state, all_guards, [text], "input"))

    print(f"{'prompt (512 chars)':20} {'normalise':>10} {'pii+secrets+regex':>18}")
    for kind in PROMPTS:
        text = prompt(kind)
        norm = per_call_us(lambda text=text: normalize(text), args.repeat * 4)
        full = per_call_us(lambda text=text: scan(text), args.repeat)
        print(f"{kind:20} {norm:8.1f}us {full:16.1f}us")
    loop.close()


if __name__ == "__main__":
    main()
