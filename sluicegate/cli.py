"""The `sluicegate` command: serve, mock-upstream, check, keys, audit, spend, report, policy. Thin over the library."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from sluicegate.observability.config import LEVELS
from sluicegate.policy.cli import policy
from sluicegate.settings import Settings

if TYPE_CHECKING:
    from sluicegate.observability.logs import LogSetup
    from sluicegate.vault.encrypted import EncryptedStore


def _setup_logging(level: str | None = "INFO", format: str | None = None) -> LogSetup:
    """Log to stderr (`observability.logs`); a flag given here wins over the config applied later."""
    from sluicegate.observability.logs import setup_logging

    return setup_logging(level, format)


def _run(coro: Any) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # uvloop is a dependency, but keep plain asyncio working
        runner = asyncio.Runner()
    with runner:
        runner.run(coro)


def _engine(config: str | None) -> Any:
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.store.db import create_engine

    settings = Settings.from_env()
    url = None
    if config:
        try:
            url = load_config(config).config.database_url
        except ConfigInvalid as exc:
            raise click.ClickException(str(exc)) from None
    return create_engine(settings.db_url(url))


@click.group()
@click.version_option(package_name="sluicegate")
def main() -> None:
    """Sluicegate: an LLM gateway that decides who calls which model, and records every call."""


@main.command()
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Gateway config (YAML); demo mode without it."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default=None,
    help="Level of every logger not named in observability.logging.levels (default: the config's, INFO).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text, or json: one object per line (default: observability.logging.format, text).",
)
@click.option(
    "--admin-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve /metrics, /healthz and /readyz on this port too (on admin.host); overrides admin.port.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    envvar="SLUICEGATE_WORKERS",
    help="Worker processes sharing the port, under a supervisor (default: the CPUs this process may "
    "use; 1 in demo mode). Workers share state as instances do: limits and cache in Redis.",
)
def serve(
    config_path: str | None,
    host: str,
    port: int,
    log_level: str | None,
    log_format: str | None,
    admin_port: int | None,
    workers: int | None,
) -> None:
    """Run the gateway (demo mode without --config)."""
    from sluicegate.edge.supervisor import default_workers

    logs = _setup_logging(log_level, log_format)
    if workers is None:
        workers = 1 if config_path is None else default_workers()
    if workers == 1:
        _run(_serve(config_path, host, port, admin_port, logs))
        return
    if config_path is None:
        raise click.ClickException("demo mode runs one worker: give --config to run several")
    sys.exit(_supervise(config_path, host, port, admin_port, logs, workers))


def _supervise(config_path: str, host: str, port: int, admin_port: int | None, logs: LogSetup, workers: int) -> int:
    """Serve with `workers` processes on one socket (`edge.supervisor`); the config is checked first."""
    import sluicegate.app  # noqa: F401  (imported before the fork: its pages are shared by the workers)
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.edge.supervisor import Supervisor, bind

    try:
        snapshot = load_config(config_path)
    except ConfigInvalid as exc:
        raise click.ClickException(str(exc)) from None
    config = snapshot.config
    if config.limits.backend == "memory" and (config.limits.rate_limits or config.limits.budgets):
        logging.getLogger("sluicegate").warning(
            "limits.backend is memory: each of the %d workers counts its own budgets and rate limits; "
            "use limits.backend: redis to share them",
            workers,
        )
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    admin = admin_port if admin_port is not None else config.admin.port
    egress_sock = None
    if config.egress.enabled:
        # The egress proxy's socket is shared by the workers too.
        try:
            egress_sock = bind(config.egress.host, config.egress.port)
        except OSError as exc:
            sock.close()
            raise click.ClickException(
                f"the egress proxy cannot listen on {config.egress.host}:{config.egress.port}: {exc.strerror}"
            ) from None

    def run_worker(index: int) -> None:
        # Each worker's admin listener takes its own port: admin port + worker index.
        worker_admin = admin + index if admin is not None else None
        _run(_serve(config_path, host, port, worker_admin, logs, sock=sock, egress_sock=egress_sock))

    try:
        return Supervisor(workers, run_worker).run()
    finally:
        sock.close()
        if egress_sock is not None:
            egress_sock.close()


async def _serve(
    config_path: str | None,
    host: str,
    port: int,
    admin_port: int | None = None,
    logs: LogSetup | None = None,
    sock: Any = None,
    egress_sock: Any = None,
) -> None:
    from sluicegate.app import Gateway
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.config.snapshot import build_snapshot
    from sluicegate.demo import DEMO_CONSUMER, demo_config, demo_key
    from sluicegate.edge.server import DrainingServer, server_config
    from sluicegate.store.db import create_engine
    from sluicegate.testing.upstream import FakeUpstream, start_server

    settings = Settings.from_env()
    mock = None
    if config_path is None:
        mock, mock_task, mock_url = await start_server(FakeUpstream(record=False, require_auth=False), "127.0.0.1", 0)
        config = demo_config(mock_url)
        engine = create_engine(settings.db_url())
        key = demo_key(engine, settings.data_dir)
        gateway = Gateway(build_snapshot(config, "<demo>"), settings=settings, engine=engine)
        models = ", ".join(m.name for m in config.models)
        base = f"http://{host}:{port}"
        click.echo(
            f"\nSluicegate demo mode: data in {settings.data_dir}/, mock provider at {mock_url}\n"
            f"  consumer '{DEMO_CONSUMER}', key: {key}\n"
            f"  models: {models}\n"
            f"  try: curl {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f'-H \'Content-Type: application/json\' -d \'{{"model":"mock-chat","messages":'
            f'[{{"role":"user","content":"Hello"}}]}}\'\n',
            err=True,
        )
    else:
        try:
            snapshot = load_config(config_path)
        except ConfigInvalid as exc:
            raise click.ClickException(str(exc)) from None
        if logs is not None:
            # The config's format and levels from now on, and again on each reload.
            logs.apply(snapshot.config.observability.logging)
        gateway = Gateway(snapshot, settings=settings, config_path=config_path)
        gateway.logs = logs
    server = DrainingServer(server_config(gateway, host, port), gateway)
    _raise_fd_limit(gateway.snapshot.server)
    admin: Any = None
    egress: Any = None
    try:
        admin_port = admin_port if admin_port is not None else gateway.snapshot.config.admin.port
        if admin_port is not None:
            admin, admin_task = await _start_admin(gateway, admin_port)
        if gateway.snapshot.config.egress.enabled:
            egress = _start_egress(gateway, egress_sock)
        await server.serve(sockets=[sock] if sock is not None else None)
    finally:
        if egress is not None:
            door, egress_task = egress
            egress_task.cancel()
            await door.stop()
        if admin is not None:
            # The data server stopped (signal or failure): the admin listener goes with it.
            admin.should_exit = True
            await admin_task
        if mock is not None:
            mock.should_exit = True
            await mock_task


async def _start_admin(gateway: Any, port: int) -> tuple[Any, asyncio.Task[None]]:
    """Start the admin listener (`admin.server`) on `admin.host` and `port`, beside the data server."""
    from sluicegate.admin.server import admin_server, bind, start_admin

    host = gateway.snapshot.config.admin.host
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"the admin listener cannot listen on {host}:{port}: {exc.strerror}") from None
    server = admin_server(gateway)
    return server, await start_admin(server, sock)


def _start_egress(gateway: Any, sock: Any) -> tuple[Any, asyncio.Task[None]]:
    """The egress proxy (`egress.door`) beside the data server, on `sock` or its own port: it takes
    connections once the gateway has started (workers share the socket: one still starting takes
    none)."""
    from sluicegate.edge.supervisor import bind
    from sluicegate.egress.door import EgressDoor

    config = gateway.snapshot.config.egress
    if sock is None:
        try:
            sock = bind(config.host, config.port)
        except OSError as exc:
            raise click.ClickException(
                f"the egress proxy cannot listen on {config.host}:{config.port}: {exc.strerror}"
            ) from None
    door = EgressDoor(gateway)
    return door, asyncio.create_task(door.serve_when_ready(sock))


def _raise_fd_limit(server: Any) -> None:
    """Let the process open as many files as its connection caps need, up to the hard limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = server.max_connections + server.max_upstream_connections + 256
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            logging.getLogger("sluicegate").warning(
                "server.max_connections needs about %d open files; this process may open %d", needed, target
            )


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option(
    "--chunk-interval-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Pause between the events of a streamed answer (a paced stream, as real models send).",
)
def mock_upstream(host: str, port: int, chunk_interval_ms: float) -> None:
    """Run the fake upstream LLM server (OpenAI wire format) for demos, tests and benchmarks."""
    from sluicegate.testing.upstream import FakeUpstream, Reply, run_server

    _setup_logging("WARNING")
    click.echo(f"fake upstream on http://{host}:{port}/v1", err=True)
    default = Reply(chunk_interval_s=chunk_interval_ms / 1000) if chunk_interval_ms else None
    _run(run_server(FakeUpstream(record=False, default=default), host, port))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate a config file; print every problem with its path; exit 1 on errors."""
    from sluicegate.config.loader import ConfigInvalid, ConfigIssue, parse_config

    try:
        text = Path(config_path).read_text(encoding="utf-8")
    except OSError as exc:
        click.echo(f"{config_path}: cannot read the file: {exc.strerror}", err=True)
        sys.exit(1)
    snapshot, issues = parse_config(text, config_path)
    for issue in issues:
        click.echo(f"{config_path}: {issue}", err=True)
    errors = [i for i in issues if not i.warning]
    if snapshot is None or errors:
        click.echo(f"{len(errors)} error(s); the config is not valid", err=True)
        sys.exit(1)
    cfg = snapshot.config
    click.echo(
        f"{config_path}: ok ({len(cfg.providers)} providers, {len(cfg.models)} models, {len(cfg.consumers)} consumers)"
    )
    del ConfigInvalid, ConfigIssue


@main.group()
def keys() -> None:
    """Create, list and revoke consumer API keys (stored hashed)."""


@keys.command("create")
@click.option("--consumer", required=True, help="Consumer name, as in the config.")
@click.option("--name", default=None, help="A label for the key.")
@click.option("--expires-in-days", type=float, default=None)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Config whose database and consumers to use."
)
def keys_create(consumer: str, name: str | None, expires_in_days: float | None, config_path: str | None) -> None:
    """Create a key and print it once; only its hash is stored."""
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.store.keys import KeyStore

    if config_path:
        try:
            snapshot = load_config(config_path)
        except ConfigInvalid as exc:
            raise click.ClickException(str(exc)) from None
        if consumer not in snapshot.consumers:
            raise click.ClickException(f"consumer '{consumer}' is not in {config_path}")
    expires = time.time() + expires_in_days * 86400 if expires_in_days else None
    engine = _engine(config_path)
    key, record = KeyStore(engine).create(consumer, name=name, expires_at=expires)
    _notify_keys(config_path, engine)
    click.echo(f"created {record.id} for consumer '{consumer}'; this key is shown once:", err=True)
    click.echo(key)


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@keys.command("list")
@click.option("--consumer", default=None)
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def keys_list(consumer: str | None, config_path: str | None) -> None:
    """List keys: id, consumer, prefix, state; never a key."""
    from sluicegate.store.keys import KeyStore

    now = time.time()
    click.echo(f"{'ID':<17} {'CONSUMER':<20} {'PREFIX':<8} {'STATE':<8} {'CREATED (UTC)':<19}  NAME")
    for r in KeyStore(_engine(config_path)).list(consumer):
        state = "revoked" if r.revoked_at else ("expired" if not r.is_active(now) else "active")
        click.echo(f"{r.id:<17} {r.consumer:<20} {r.prefix:<8} {state:<8} {_when(r.created_at):<19}  {r.name or ''}")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def keys_revoke(key_id: str, config_path: str | None) -> None:
    """Revoke a key by id; every instance refuses it within a second (at once with a shared Redis)."""
    from sluicegate.store.keys import KeyStore

    engine = _engine(config_path)
    if not KeyStore(engine).revoke(key_id):
        raise click.ClickException(f"no active key with id {key_id}")
    _notify_keys(config_path, engine)
    click.echo(f"revoked {key_id}")


def _notify_keys(config_path: str | None, engine: Any) -> None:
    """Tell the instances that share the config's limits Redis that the keys changed, so they
    reload them now rather than at their next poll (`store.changes`)."""
    if not config_path:
        return
    from sluicegate.config.loader import load_config

    config = load_config(config_path).config
    redis = config.limits.redis if config.limits.backend == "redis" else None
    if redis is None:
        return
    from sluicegate.store.changes import KEYS, publish
    from sluicegate.vault import Vault
    from sluicegate.vault.refs import is_secret_ref

    url = redis.url
    try:
        if is_secret_ref(url):
            url = Vault(config.vault, engine=engine).resolve(url)
    except Exception as exc:
        click.echo(f"the instances will see the change at their next poll (Redis URL: {type(exc).__name__})", err=True)
        return
    publish(url, redis.key_prefix, KEYS)


@main.group("secrets")
def secrets_group() -> None:
    """Store provider credentials encrypted in the database, for `secret://name` references."""


def _secret_store(config_path: str | None) -> EncryptedStore:
    from sluicegate.vault import SecretUnavailable
    from sluicegate.vault.encrypted import EncryptedStore, load_master_key

    try:
        key = load_master_key()
    except SecretUnavailable as exc:
        raise click.ClickException(exc.message) from None
    return EncryptedStore(_engine(config_path), key)


@secrets_group.command("set")
@click.argument("name")
@click.option(
    "--from-file", "from_file", type=click.File("r", encoding="utf-8"), help="Read the value from a file, not stdin."
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def secrets_set(name: str, from_file: Any, config_path: str | None) -> None:
    """Store a secret read from stdin (or --from-file), never from the command line."""
    from sluicegate.vault import SecretUnavailable
    from sluicegate.vault.encrypted import EncryptedStore

    try:
        EncryptedStore.check_name(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if from_file is not None:
        value = from_file.read()
    elif sys.stdin.isatty():
        value = click.prompt(f"value of {name}", hide_input=True, err=True)
    else:
        value = sys.stdin.read()
    try:
        info = _secret_store(config_path).set(name, value.strip())
    except (ValueError, SecretUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stored secret '{name}' (master key {info.key_id}, fingerprint {info.fingerprint})")


@secrets_group.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def secrets_list(config_path: str | None) -> None:
    """List secrets: name, master key id, fingerprint, update time; never a value."""
    from sluicegate.vault.encrypted import EncryptedStore

    # Listing needs no master key: it reads no ciphertext.
    rows = EncryptedStore(_engine(config_path)).list()
    click.echo(f"{'NAME':<32} {'KEY ID':<12} {'FINGERPRINT':<12} UPDATED (UTC)")
    for r in rows:
        click.echo(f"{r.name:<32} {r.key_id:<12} {r.fingerprint:<12} {_when(r.updated_at)}")


@secrets_group.command("rotate")
@click.option(
    "--new-key-file", required=True, type=click.Path(dir_okay=False, exists=True), help="File with the new key."
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def secrets_rotate(new_key_file: str, config_path: str | None) -> None:
    """Re-encrypt every secret under a new master key, in one transaction."""
    from sluicegate.vault import SecretUnavailable
    from sluicegate.vault.encrypted import MasterKey

    try:
        new_key = MasterKey.from_file(new_key_file)
        count = _secret_store(config_path).rotate(new_key)
    except SecretUnavailable as exc:
        raise click.ClickException(exc.message) from None
    click.echo(
        f"re-encrypted {count} secret(s) under master key {new_key.key_id}; "
        "point SLUICEGATE_MASTER_KEY(_FILE) at the new key now"
    )


@secrets_group.command("delete")
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def secrets_delete(name: str, config_path: str | None) -> None:
    """Remove a secret; references to it then fail closed."""
    from sluicegate.vault.encrypted import EncryptedStore

    if not EncryptedStore(_engine(config_path)).delete(name):
        raise click.ClickException(f"no secret named '{name}'")
    click.echo(f"deleted secret '{name}'")


@keys.command("rotate")
@click.argument("key_id")
@click.option("--overlap-hours", type=float, default=24.0, show_default=True, help="How long the old key stays valid.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def keys_rotate(key_id: str, overlap_hours: float, config_path: str | None) -> None:
    """Replace a key: print a new one for the same consumer; the old one expires after the overlap."""
    from sluicegate.store.keys import KeyStore

    try:
        key, record = KeyStore(_engine(config_path)).rotate(key_id, overlap_hours * 3600)
    except KeyError:
        raise click.ClickException(f"no active key with id {key_id}") from None
    click.echo(f"created {record.id} for '{record.consumer}'; {key_id} expires in {overlap_hours:g} h", err=True)
    click.echo(key)


@main.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("tail")
@click.option("-n", "--lines", "limit", default=20, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def audit_tail(limit: int, as_json: bool, config_path: str | None) -> None:
    """Print the latest audit events, oldest first."""
    from sluicegate.audit.reader import latest_events

    events = latest_events(_engine(config_path), limit)
    if as_json:
        for event in events:
            click.echo(orjson.dumps(event).decode())
        return
    click.echo(
        f"{'TIME (UTC)':<19} {'REQUEST':<28} {'CONSUMER':<12} {'MODEL':<16} {'STATUS':>6} "
        f"{'DECISION':<9} {'OUTCOME':<22} {'TOKENS':>7} {'MS':>8}"
    )
    for e in events:
        tokens = "-" if e["total_tokens"] is None else str(e["total_tokens"])
        click.echo(
            f"{_when(e['ts']):<19} {e['request_id']:<28} {(e['consumer'] or '-'):<12} "
            f"{(e['model_requested'] or '-')[:16]:<16} {e['status']:>6} {e['decision']:<9} "
            f"{e['outcome'][:22]:<22} {tokens:>7} {e['latency_ms']:>8.1f}"
        )


def _chain_parts(config_path: str | None) -> tuple[Any, Any, Any]:
    """The store, the chain's key and the anchor file, as the gateway with this config has them."""
    from sluicegate.audit.chain import AnchorFile, ChainKey, anchor_path
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.config.model import GatewayConfig
    from sluicegate.store.db import create_engine
    from sluicegate.vault import SecretUnavailable, Vault

    settings = Settings.from_env()
    try:
        config = load_config(config_path).config if config_path else GatewayConfig()
    except ConfigInvalid as exc:
        raise click.ClickException(str(exc)) from None
    engine = create_engine(settings.db_url(config.database_url))
    chain_cfg = config.audit.chain
    ref = chain_cfg.key
    if ref is None:
        from sluicegate.audit.chain import DEFAULT_KEY_FILE

        path = settings.data_dir / DEFAULT_KEY_FILE
        if not path.exists():
            raise click.ClickException(f"no audit chain key: {path} does not exist and audit.chain.key is not set")
        ref = f"file://{path.resolve()}"
    vault = Vault(config.vault, engine=engine)
    try:
        key = ChainKey.from_secret(vault.resolve(ref))
        previous = [ChainKey.from_secret(vault.resolve(old)) for old in chain_cfg.previous_keys]
    except (SecretUnavailable, ValueError) as exc:
        raise click.ClickException(f"an audit chain key cannot be read: {exc}") from None
    return engine, (key, previous), AnchorFile(anchor_path(chain_cfg, settings.data_dir))


@audit.command("verify")
@click.option("--anchors", "anchors_path", type=click.Path(dir_okay=False), help="Anchor file (default: the config's).")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def audit_verify(anchors_path: str | None, as_json: bool, config_path: str | None) -> None:
    """Replay the audit hash chain; report the first edited, deleted, inserted or truncated event.

    Exits 0 when the trail is intact, 1 when it is not."""
    from sluicegate.audit.chain import AnchorFile, verify

    engine, (key, previous), anchor_file = _chain_parts(config_path)
    if anchors_path:
        anchor_file = AnchorFile(Path(anchors_path))
    report = verify(engine, key, anchor_file.read(), previous_keys=previous)
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
    elif report.intact:
        since = f" (from the retention checkpoint at {report.checkpoint})" if report.checkpoint else ""
        click.echo(
            f"audit trail intact: {report.events} events, positions {report.first or 0}..{report.last or 0}{since}; "
            f"head {report.head_hash[:16]}..., {report.anchors} anchors agree"
            + (f"; {report.legacy} events from before the chain" if report.legacy else "")
        )
    else:
        first = report.problems[0]
        where = f"position {first.position}" if first.position is not None else "a row without a position"
        click.echo(f"AUDIT TRAIL NOT INTACT: first problem at {where}: {first.kind}: {first.detail}", err=True)
        for problem in report.problems:
            rid = f" ({problem.request_id})" if problem.request_id else ""
            click.echo(f"  {problem.kind:<10} {problem.position if problem.position is not None else '-':>10}{rid}: "
                       f"{problem.detail}", err=True)  # fmt: skip
    sys.exit(0 if report.intact else 1)


@audit.command("retention")
@click.option("--older-than", required=True, help="Delete events older than this: ISO 8601 or a time ago (90d).")
@click.option("--operator", default=None, help="Who runs it, recorded in the retention event.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def audit_retention(older_than: str, operator: str | None, yes: bool, config_path: str | None) -> None:
    """Delete old audit events, leaving a checkpoint the chain verifies from, as an audited operation."""
    from sluicegate.audit.chain import Chain, retain

    cutoff = _moment(older_than, "UTC")
    engine, (key, _), _ = _chain_parts(config_path)
    if not yes:
        click.confirm(f"Delete every audit event older than {_when(cutoff)} UTC?", abort=True)
    done = retain(engine, Chain(key), cutoff, operator=operator)
    click.echo(
        f"deleted {done.deleted + done.legacy_deleted} events through chain position {done.through_seq}; "
        f"recorded as {done.request_id}"
    )


def _audit_filters(command: Any) -> Any:
    """The filters `audit search` and `audit export` share."""
    options = [
        click.option("--consumer", help="Consumer name."),
        click.option("--key", "key_id", help="API key id (key_...)."),
        click.option("--model", help="The model asked for or the one that answered."),
        click.option("--provider", help="Provider name, as in the config."),
        click.option("--status", help="An HTTP status (429) or a class (4xx)."),
        click.option("--decision", help="allowed, blocked, failed ..."),
        click.option("--outcome", help="ok, rate_limited, guard_blocked ..."),
        click.option("--guard", help="A guard's name, among the call's guard decisions."),
        click.option("--request-id", help="The x-request-id of a call."),
        click.option("--since", help="Start: ISO 8601 or a time ago (7d, 24h, 30m)."),
        click.option("--until", help="End, excluded: ISO 8601 or a time ago; default: now."),
        click.option("--timezone", "zone", default="UTC", show_default=True, help="For times without an offset."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False)),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _audit_query(filters: dict[str, Any]) -> Any:
    from sluicegate.audit.search import AuditQuery

    zone = filters.pop("zone")
    _zone(zone)
    filters.pop("config_path")
    now = time.time()
    for name in ("since", "until"):
        if filters[name] is not None:
            filters[name] = _moment(filters[name], zone, now)
    if filters["since"] is not None and filters["until"] is not None and filters["since"] >= filters["until"]:
        raise click.BadParameter("--since must be before --until")
    try:
        return AuditQuery(**filters)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--status") from None


def _cell(value: object, width: int) -> str:
    """A table cell: control characters (a client's model name can hold escapes) shown as `?`, cut to width."""
    text = "-" if value is None else "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


@audit.command("search")
@_audit_filters
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="Events per page.")
@click.option("--after", type=click.IntRange(min=0), help="The cursor a previous page printed (an event's seq).")
@click.option("--oldest-first", is_flag=True, help="Oldest events first (default: newest first).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line; the next cursor on stderr.")
def audit_search(limit: int, after: int | None, oldest_first: bool, as_json: bool, **filters: Any) -> None:
    """Find audit events by consumer, key, model, provider, status, decision, guard or time, a page at a time."""
    from sluicegate.audit.export import write_jsonl
    from sluicegate.audit.search import search

    zone = _zone(filters["zone"])
    config_path = filters["config_path"]
    page = search(_engine(config_path), _audit_query(filters), limit, after, oldest_first)
    more = f"next page: --after {page.next_after}" if page.next_after is not None else "last page"
    if as_json:
        with _output(None, binary=True) as out:
            write_jsonl(page.events, out)
        click.echo(more, err=True)
        return
    click.echo(
        f"{'SEQ':>7} {('TIME (' + zone.key + ')')[:19]:<19} {'REQUEST':<28} {'CONSUMER':<12} {'MODEL':<16} "
        f"{'STATUS':>6} {'DECISION':<9} OUTCOME"
    )
    for e in page.events:
        when = dt.datetime.fromtimestamp(e["ts"], zone).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{e['seq']:>7} {when:<19} {_cell(e['request_id'], 28):<28} {_cell(e['consumer'], 12):<12} "
            f"{_cell(e['model_requested'], 16):<16} {e['status']:>6} {_cell(e['decision'], 9):<9} "
            f"{_cell(e['outcome'], 18)}"
        )
    click.echo(f"{len(page.events)} event(s); {more}")


@audit.command("export")
@_audit_filters
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (default: stdout).")
def audit_export(fmt: str, output: str | None, **filters: Any) -> None:
    """Write every matching audit event, oldest first, as JSON Lines or CSV (with a header row)."""
    from sluicegate.audit.export import write_csv, write_jsonl
    from sluicegate.audit.search import columns, stream

    engine = _engine(filters["config_path"])
    events = stream(engine, _audit_query(filters))
    with _output(output, binary=fmt == "jsonl") as out:
        count = write_jsonl(events, out) if fmt == "jsonl" else write_csv(events, out, columns())
    click.echo(f"exported {count} event(s)" + (f" to {output}" if output else ""), err=True)


@contextlib.contextmanager
def _output(path: str | None, binary: bool) -> Iterator[Any]:
    """stdout, or a file written whole: beside it first, renamed into place once complete."""
    if path is None:
        sys.stdout.flush()
        out = sys.stdout.buffer if binary else sys.stdout
        yield out
        out.flush()
        return
    partial = Path(f"{path}.partial")
    try:
        with partial.open("wb") if binary else partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _zone(name: str) -> Any:
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone '{name}'") from None


def _moment(text: str, zone: str, now: float | None = None) -> float:
    from sluicegate.moments import parse_moment

    try:
        return parse_moment(text, time.time() if now is None else now, _zone(zone))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--by", type=click.Choice(["consumer", "group", "model", "provider", "key"]), default="consumer")
@click.option("--period", type=click.Choice(["day", "week", "month"]), default="month", show_default=True)
@click.option("--since", default=None, help="Start (ISO 8601); overrides --period.")
@click.option("--until", default=None, help="End (ISO 8601, excluded); default: now.")
@click.option("--timezone", "zone", default="UTC", show_default=True, help="For --period and dates without an offset.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Adds the state of its budgets.")
def spend(
    by: str, period: str, since: str | None, until: str | None, zone: str, as_json: bool, config_path: str | None
) -> None:
    """Spend and tokens by consumer, group, model, provider or key, and each budget's state."""
    import zoneinfo

    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.config.model import GatewayConfig
    from sluicegate.config.snapshot import build_snapshot
    from sluicegate.limits.report import budget_states, spend_report
    from sluicegate.limits.windows import calendar_bounds

    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone '{zone}'") from None
    now = time.time()
    end = _moment(until, zone) if until else now
    start = _moment(since, zone) if since else calendar_bounds(min(now, end - 1e-6), period, tz)[0]
    if start >= end:
        raise click.BadParameter("--since must be before --until")
    try:
        snapshot = load_config(config_path) if config_path else build_snapshot(GatewayConfig())
    except ConfigInvalid as exc:
        raise click.ClickException(str(exc)) from None
    engine = _engine(config_path)
    report = spend_report(engine, snapshot, by, start, end)
    budgets: list[dict[str, Any]] = []

    async def read_budgets() -> None:
        counters = None
        limits = snapshot.config.limits
        if limits.backend == "redis" and limits.redis is not None:
            from sluicegate.limits.service import LimitsService
            from sluicegate.vault import Vault

            service = LimitsService(vault=Vault(snapshot.config.vault, engine=engine))
            service.configure(limits)
            try:
                counters = await service.counters()
                budgets.extend(await budget_states(engine, snapshot, counters.clock(), counters))
            finally:
                await service.stop()
            return
        budgets.extend(await budget_states(engine, snapshot, now))

    if snapshot.config.limits.budgets:
        try:
            asyncio.run(read_budgets())
        except Exception as exc:
            raise click.ClickException(f"cannot read the budgets' counters ({type(exc).__name__})") from None
    report["budgets"] = budgets
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    currency = report["currency"]
    click.echo(f"spend by {by}, {report['since']} to {report['until']} ({currency})")
    click.echo(f"{by.upper():<32} {'CALLS':>8} {'PROMPT':>12} {'COMPLETION':>12} {'COST':>16}")
    for row in report["rows"]:
        click.echo(
            f"{row['name'][:32]:<32} {row['calls']:>8} {row['prompt_tokens']:>12} "
            f"{row['completion_tokens']:>12} {row['cost_micro'] / 1e6:>16.6f}"
        )
    if budgets:
        click.echo("")
        click.echo(
            f"{'BUDGET':<20} {'SCOPE':<28} {'WINDOW':<22} {'LIMIT':>12} {'USED':>12} {'RESERVED':>12} "
            f"{'REMAINING':>12}  RESETS AT (UTC)"
        )
        for b in budgets:
            reserved = "-" if b["reserved_micro"] is None else f"{b['reserved_micro'] / 1e6:.6f}"
            click.echo(
                f"{b['budget'][:20]:<20} {(b['scope'] + '=' + b['value'])[:28]:<28} {b['window'][:22]:<22} "
                f"{b['limit_micro'] / 1e6:>12.6f} {b['used_micro'] / 1e6:>12.6f} {reserved:>12} "
                f"{b['remaining_micro'] / 1e6:>12.6f}  {b['resets_at']}"
            )


@main.group(invoke_without_command=True)
@click.option("--period", type=click.Choice(["day", "week", "month"]), default="month", show_default=True)
@click.option("--since", default=None, help="Start: ISO 8601 or a time ago (7d); overrides --period.")
@click.option("--until", default=None, help="End (excluded): ISO 8601 or a time ago; default: now.")
@click.option("--timezone", "zone", default="UTC", show_default=True, help="Of the days; for times without an offset.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Also write the rows to this CSV file.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), help="Also draw the daily cost per consumer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Its database and currency.")
@click.pass_context
def report(
    ctx: click.Context,
    period: str,
    since: str | None,
    until: str | None,
    zone: str,
    csv_path: str | None,
    chart_path: str | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Usage and cost by day, consumer and model over a period, as `spend` counts them.

    `report shadow-ai`: what the egress proxy blocked, intercepted and allowed."""
    if ctx.invoked_subcommand is not None:
        return
    from sluicegate.audit.export import write_csv
    from sluicegate.config.loader import ConfigInvalid, load_config
    from sluicegate.limits.chart import ChartUnavailable, draw_daily_cost, require_matplotlib
    from sluicegate.limits.usage import ROW_FIELDS, micro_text, usage_report
    from sluicegate.limits.windows import calendar_bounds

    tz = _zone(zone)
    now = time.time()
    end = _moment(until, zone, now) if until else now
    start = _moment(since, zone, now) if since else calendar_bounds(min(now, end - 1e-6), period, tz)[0]
    if start >= end:
        raise click.BadParameter("--since must be before --until")
    try:
        if chart_path:
            require_matplotlib()  # before the work, not after it
        currency = load_config(config_path).config.limits.currency if config_path else "USD"
    except (ChartUnavailable, ConfigInvalid) as exc:
        raise click.ClickException(str(exc)) from None
    data = usage_report(_engine(config_path), start, end, tz, currency)
    if csv_path:
        rows = ({**row, "cost": micro_text(row["cost_micro"])} for row in data["rows"])
        with _output(csv_path, binary=False) as out:
            write_csv(rows, out, ROW_FIELDS)
    if chart_path:
        with _output(chart_path, binary=True) as out:
            draw_daily_cost(data, out)
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    first, last = data["days"][0]["day"], data["days"][-1]["day"]
    click.echo(f"usage by day, consumer and model, {first} to {last} ({data['timezone']}, {currency})")
    header = f"{'CALLS':>8} {'PROMPT':>12} {'COMPLETION':>12} {'COST':>16}"

    def figures(row: dict[str, Any]) -> str:
        return (
            f"{row['calls']:>8} {row['prompt_tokens']:>12} {row['completion_tokens']:>12} "
            f"{micro_text(row['cost_micro']):>16}"
        )

    click.echo(f"{'DAY':<10}  {'CONSUMER':<20} {'MODEL':<28} {header}")
    for row in data["rows"]:
        click.echo(f"{row['day']:<10}  {_cell(row['consumer'], 20):<20} {_cell(row['model'], 28):<28} {figures(row)}")
    click.echo("")
    click.echo(f"{'CONSUMER':<60} {header}")
    for row in data["consumers"]:
        click.echo(f"{_cell(row['consumer'], 60):<60} {figures(row)}")
    click.echo(f"{'TOTAL':<60} {'':>8} {'':>12} {'':>12} {micro_text(data['total_cost_micro']):>16}")
    for path, what in ((csv_path, "rows"), (chart_path, "chart")):
        if path:
            click.echo(f"wrote the {what} to {path}", err=True)


main.add_command(policy)


@report.command("shadow-ai")
@click.option("--since", default="7d", show_default=True, help="Start: ISO 8601 or a time ago (7d, 24h).")
@click.option("--until", default=None, help="End (excluded): ISO 8601 or a time ago; default: now.")
@click.option("--timezone", "zone", default="UTC", show_default=True, help="For times without an offset.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Its database.")
def report_shadow_ai(since: str, until: str | None, zone: str, as_json: bool, config_path: str | None) -> None:
    """Attempts to reach AI services through the egress proxy, blocked, intercepted, allowed or
    denied, by source address and host."""
    from sluicegate.egress.report import KINDS, shadow_ai_report

    _zone(zone)
    now = time.time()
    start = _moment(since, zone, now)
    end = _moment(until, zone, now) if until else now
    if start >= end:
        raise click.BadParameter("--since must be before --until")
    data = shadow_ai_report(_engine(config_path), start, end)
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"egress attempts by source and host, {data['since']} to {data['until']}")
    counts = " ".join(f"{kind.upper():>11}" for kind in KINDS)
    click.echo(f"{'SOURCE':<39} {'CONSUMER':<20} {'HOST':<40} {counts}  LAST SEEN (UTC)")
    for row in data["rows"]:
        figures = " ".join(f"{row[kind]:>11}" for kind in KINDS)
        click.echo(
            f"{_cell(row['source'], 39):<39} {_cell(row['consumer'], 20):<20} {_cell(row['host'], 40):<40} "
            f"{figures}  {row['last_seen']}"
        )
    totals = " ".join(f"{data['totals'][kind]:>11}" for kind in KINDS)
    click.echo(f"{'TOTAL':<101} {totals}")


if __name__ == "__main__":
    main()
