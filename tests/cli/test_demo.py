"""Demo mode, as the README's first command runs it: no config, no internet, no provider key."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_mode_answers_offline_with_the_printed_key(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["SLUICEGATE_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluicegate.cli", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "demo gateway did not become ready"
            time.sleep(0.1)
        key = (tmp_path / "data" / "demo-key").read_text().strip()
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "echo: hi"}])
        assert reply.choices[0].message.content == "hi"
        chunks = client.chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": "echo: a b"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b"
        assert len(client.embeddings.create(model="mock-embed", input="x").data) == 1
        assert sorted(m.id for m in client.models.list()) == ["mock-chat", "mock-embed"]
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    # the key printed at start is the one kept in the data folder
    printed = re.search(r"key: (sg-\S+)", output)
    assert printed and printed.group(1) == key
    # a second start reuses the same key
    from sluicegate.demo import demo_key
    from sluicegate.store.db import create_engine

    assert demo_key(create_engine(f"sqlite:///{tmp_path / 'data' / 'sluicegate.db'}"), tmp_path / "data") == key
