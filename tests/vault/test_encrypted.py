"""The encrypted store: AES-GCM round trip, tamper and wrong-key refusal, rotation, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sluicegate.cli import main
from sluicegate.settings import Settings
from sluicegate.store.db import create_engine, secrets_table
from sluicegate.vault import SecretUnavailable, Vault
from sluicegate.vault.encrypted import (
    EncryptedStore,
    MasterKey,
    MasterKeyError,
    _aad,
    fingerprint,
    load_master_key,
)

CANARIES = {"openai": "sk-enc-canary-1a2b3c4d5e6f", "anthropic": "sk-ant-enc-canary-9f8e7d6c", "prod/x": "c-3x7y"}


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")


def _key() -> MasterKey:
    return MasterKey.from_base64(MasterKey.generate(), "test")


def _rows(engine: sa.Engine) -> list[sa.Row[tuple[str, bytes, bytes, str]]]:
    t = secrets_table
    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.c.name, t.c.ciphertext, t.c.nonce, t.c.key_id)))


def test_round_trip_stores_ciphertext_only(engine: sa.Engine) -> None:
    store = EncryptedStore(engine, _key())
    for name, value in CANARIES.items():
        info = store.set(name, value)
        assert info.fingerprint == fingerprint(value) and info.key_id == store.key.key_id
    assert {name: store.get(name) for name in CANARIES} == CANARIES
    with engine.connect() as conn:
        dump = repr(conn.execute(sa.select(secrets_table)).all())
    assert not any(v in dump or v.encode().hex() in dump for v in CANARIES.values())
    assert [i.name for i in store.list()] == sorted(CANARIES)
    store.set("openai", "sk-replaced")
    assert store.get("openai") == "sk-replaced"
    assert store.delete("openai") and not store.delete("openai")
    with pytest.raises(SecretUnavailable, match=r"secret://openai is not in the store"):
        store.get("openai")


def test_tampered_or_moved_ciphertext_is_refused(engine: sa.Engine) -> None:
    store = EncryptedStore(engine, _key())
    store.set("openai", CANARIES["openai"])
    store.set("anthropic", CANARIES["anthropic"])
    [row] = [r for r in _rows(engine) if r.name == "openai"]
    flipped = bytes([row.ciphertext[0] ^ 1]) + row.ciphertext[1:]
    t = secrets_table
    with engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.name == "openai").values(ciphertext=flipped))
    with pytest.raises(SecretUnavailable, match="integrity") as info:
        store.get("openai")
    assert CANARIES["openai"] not in str(info.value)
    # A valid ciphertext copied under another name fails too: the name is bound as associated data.
    with engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.name == "openai").values(ciphertext=row.ciphertext))
        conn.execute(sa.delete(t).where(t.c.name == "anthropic"))
        conn.execute(sa.update(t).where(t.c.name == "openai").values(name="anthropic"))
    with pytest.raises(SecretUnavailable, match="integrity"):
        store.get("anthropic")


def test_wrong_master_key_is_refused_clearly(engine: sa.Engine) -> None:
    right, wrong = _key(), _key()
    EncryptedStore(engine, right).set("openai", CANARIES["openai"])
    with pytest.raises(MasterKeyError) as info:
        EncryptedStore(engine, wrong).get("openai")
    message = str(info.value)
    assert right.key_id in message and wrong.key_id in message and "secret://openai" in message
    # Writing under a second key would leave the store unrotatable: refused.
    with pytest.raises(MasterKeyError, match=right.key_id):
        EncryptedStore(engine, wrong).set("other", "v")
    assert right.key.hex() not in repr(right) and right.key_id in repr(right)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no master key"),
        ({"SLUICEGATE_MASTER_KEY": "not base64!"}, "not base64"),
        ({"SLUICEGATE_MASTER_KEY": "c2hvcnQ="}, "must be 32 bytes"),
        ({"SLUICEGATE_MASTER_KEY_FILE": "/nonexistent/key"}, "cannot be read"),
    ],
    ids=["missing", "not-base64", "short", "no-file"],
)
def test_bad_master_key_configuration(env: dict[str, str], message: str) -> None:
    with pytest.raises(MasterKeyError, match=message):
        load_master_key(env)


def test_rotation_reencrypts_everything_and_retires_the_old_key(engine: sa.Engine) -> None:
    old, new = _key(), _key()
    store = EncryptedStore(engine, old)
    for name, value in CANARIES.items():
        store.set(name, value)
    before = {r.name: r for r in _rows(engine)}
    assert store.rotate(new) == len(CANARIES)
    after = _rows(engine)
    assert {r.key_id for r in after} == {new.key_id}
    assert {name: EncryptedStore(engine, new).get(name) for name in CANARIES} == CANARIES
    for r in after:
        assert r.ciphertext != before[r.name].ciphertext and r.nonce != before[r.name].nonce
        with pytest.raises(InvalidTag):
            AESGCM(old.key).decrypt(r.nonce, r.ciphertext, _aad(r.name))
    with pytest.raises(MasterKeyError):
        EncryptedStore(engine, old).get("openai")
    assert [i.fingerprint for i in store.list()] == [fingerprint(CANARIES[n]) for n in sorted(CANARIES)]
    assert store.rotate(new) == 0  # run again (e.g. after an interruption): nothing left to do


def test_rotation_is_all_or_nothing(engine: sa.Engine) -> None:
    old = _key()
    store = EncryptedStore(engine, old)
    for name, value in CANARIES.items():
        store.set(name, value)
    t = secrets_table
    with engine.begin() as conn:
        conn.execute(sa.update(t).where(t.c.name == "prod/x").values(nonce=b"\0" * 12))
    with pytest.raises(SecretUnavailable, match="secret://prod/x"):
        store.rotate(_key())
    assert {r.key_id for r in _rows(engine)} == {old.key_id}
    assert EncryptedStore(engine, old).get("openai") == CANARIES["openai"]


def test_gateway_vault_follows_a_replaced_key_file(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "master.key"
    old_text, new_text = MasterKey.generate(), MasterKey.generate()
    key_file.write_text(old_text)
    monkeypatch.delenv("SLUICEGATE_MASTER_KEY", raising=False)
    monkeypatch.setenv("SLUICEGATE_MASTER_KEY_FILE", str(key_file))
    store = EncryptedStore(engine, load_master_key())
    store.set("openai", CANARIES["openai"])
    vault = Vault(engine=engine)
    assert vault.resolve("secret://openai") == CANARIES["openai"]
    store.rotate(MasterKey.from_base64(new_text, "test"))
    vault.clear()
    with pytest.raises(MasterKeyError):
        vault.resolve("secret://openai")  # the file still holds the old key
    key_file.write_text(new_text)
    assert vault.resolve("secret://openai") == CANARIES["openai"]


def test_cli_set_list_rotate_delete_never_print_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICEGATE_DATABASE_URL", raising=False)
    monkeypatch.delenv("SLUICEGATE_MASTER_KEY_FILE", raising=False)
    old_text = MasterKey.generate()
    env = {"SLUICEGATE_DATA_DIR": str(tmp_path / "data"), "SLUICEGATE_MASTER_KEY": old_text}
    runner = CliRunner()
    outputs: list[str] = []

    def run(*args: str, input: str | None = None, code: int = 0, **extra: str) -> str:
        result = runner.invoke(main, list(args), input=input, env={**env, **extra})
        outputs.append(result.output)
        assert result.exit_code == code, result.output
        return result.output

    run("secrets", "set", "openai", input=CANARIES["openai"] + "\n")
    value_file = tmp_path / "value"
    value_file.write_text(CANARIES["anthropic"])
    run("secrets", "set", "anthropic", "--from-file", str(value_file))
    listing = run("secrets", "list", SLUICEGATE_MASTER_KEY="")
    old_id = MasterKey.from_base64(old_text, "test").key_id
    assert "openai" in listing and "anthropic" in listing and old_id in listing
    assert fingerprint(CANARIES["openai"]) in listing
    new_file = tmp_path / "new.key"
    new_file.write_text(MasterKey.generate())
    new_id = MasterKey.from_file(new_file).key_id
    assert "re-encrypted 2 secret(s)" in run("secrets", "rotate", "--new-key-file", str(new_file))
    listing = run("secrets", "list")
    assert new_id in listing and old_id not in listing
    assert "no master key" in run("secrets", "set", "x", input="v", code=1, SLUICEGATE_MASTER_KEY="")
    run("secrets", "set", "x", input="v", code=1)  # still the old key in the environment: refused
    settings = Settings(data_dir=tmp_path / "data")
    assert (
        EncryptedStore(create_engine(settings.db_url()), MasterKey.from_file(new_file)).get("openai")
        == (CANARIES["openai"])
    )
    run("secrets", "delete", "openai")
    assert "no secret named" in run("secrets", "delete", "openai", code=1)
    run("secrets", "set", "bad name", input="v", code=1)
    text = "\n".join(outputs)
    assert not any(v in text for v in CANARIES.values())
