"""The vault's cache and scheduling: TTL, coalesced misses, failures not cached, reads off the loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sluicegate.config.model import VaultConfig
from sluicegate.vault import SecretUnavailable, Vault

CANARY = "sk-vault-canary-0d9c8b7a"


class CountingBackend:
    """A remote-like backend: counts reads, records their thread, blocks until released."""

    def __init__(self) -> None:
        self.reads = 0
        self.threads: set[int] = set()
        self.release = threading.Event()
        self.fail = False
        self.value = CANARY

    def read(self, ref: str) -> str:
        self.reads += 1
        self.threads.add(threading.get_ident())
        assert self.release.wait(10)
        if self.fail:
            raise SecretUnavailable(f"secret reference {ref} cannot be read (Test)")
        return self.value


def _vault(backend: CountingBackend, ttl_s: float = 60) -> Vault:
    vault = Vault(VaultConfig(cache_ttl_s=ttl_s))
    vault._backends["aws-sm"] = backend
    return vault


async def test_concurrent_misses_share_one_read_off_the_event_loop() -> None:
    backend = CountingBackend()
    vault = _vault(backend)
    tasks = [asyncio.create_task(vault.aresolve("aws-sm://k")) for _ in range(20)]
    # The loop keeps running while the read blocks: this sleep returns only if it is not blocked.
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in tasks)
    backend.release.set()
    assert await asyncio.gather(*tasks) == [CANARY] * 20
    assert backend.reads == 1
    assert threading.get_ident() not in backend.threads
    assert await vault.aresolve("aws-sm://k") == CANARY and backend.reads == 1


async def test_a_cancelled_caller_does_not_cancel_the_read_for_others() -> None:
    backend = CountingBackend()
    vault = _vault(backend)
    first = asyncio.create_task(vault.aresolve("aws-sm://k"))
    second = asyncio.create_task(vault.aresolve("aws-sm://k"))
    await asyncio.sleep(0.01)
    first.cancel()
    backend.release.set()
    assert await second == CANARY
    assert first.cancelled() and backend.reads == 1


async def test_failures_fail_closed_and_are_not_cached() -> None:
    backend = CountingBackend()
    backend.release.set()
    backend.fail = True
    vault = _vault(backend)
    with pytest.raises(SecretUnavailable, match=r"aws-sm://k"):
        await vault.aresolve("aws-sm://k")
    backend.fail = False
    assert await vault.aresolve("aws-sm://k") == CANARY
    assert backend.reads == 2


async def test_values_expire_after_the_ttl_and_configure_drops_them() -> None:
    backend = CountingBackend()
    backend.release.set()
    vault = _vault(backend, ttl_s=0)
    await vault.aresolve("aws-sm://k")
    await vault.aresolve("aws-sm://k")
    assert backend.reads == 2  # TTL 0: no cache
    vault.configure(VaultConfig(cache_ttl_s=60))
    vault._backends["aws-sm"] = backend
    await vault.aresolve("aws-sm://k")
    await vault.aresolve("aws-sm://k")
    assert backend.reads == 3
    backend.value = "sk-rotated"
    vault.configure(VaultConfig(cache_ttl_s=60))
    vault._backends["aws-sm"] = backend
    assert await vault.aresolve("aws-sm://k") == "sk-rotated"


async def test_env_and_file_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TEST_KEY", CANARY)
    (tmp_path / "key").write_text(CANARY + "\n")
    (tmp_path / "empty").write_text("\n")
    vault = Vault()
    assert await vault.aresolve("env://VAULT_TEST_KEY") == CANARY
    assert await vault.aresolve(f"file://{tmp_path}/key") == CANARY
    for ref, message in [
        ("env://VAULT_TEST_UNSET", "env://VAULT_TEST_UNSET is not set"),
        (f"file://{tmp_path}/missing", "cannot be read"),
        (f"file://{tmp_path}/empty", "is empty"),
        ("nope://x", "unsupported secret reference scheme"),
        ("secret://x", "need the gateway database"),
        ("aws-sm://x", "vault.aws"),
        ("vault://x#y", "vault.hashicorp"),
    ]:
        with pytest.raises(SecretUnavailable, match=message) as info:
            await vault.aresolve(ref)
        assert CANARY not in str(info.value)


async def test_cached_answers_only_live_entries() -> None:
    backend = CountingBackend()
    backend.release.set()
    vault = _vault(backend)
    assert vault.cached("aws-sm://k") is None
    await vault.aresolve("aws-sm://k")
    assert vault.cached("aws-sm://k") == CANARY
    vault.clear()
    assert vault.cached("aws-sm://k") is None
