"""A real PostgreSQL server on a free loopback port, from the machine's binaries (Debian's
`postgresql`), that a test can stop and start again; skipped where there are none.

`postgres` (in `tests/conftest.py`) runs one for a test module; `fresh_database` makes an empty
database on it for a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

BIN = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(BIN.glob("*/bin/initdb")) if BIN.exists() else []
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Postgres:
    """One PostgreSQL server on loopback, run as the `postgres` user when the tests run as root;
    from `bindir` if given (another build, as `pgserver`'s with pgvector), else the machine's."""

    def __init__(self, root: Path, bindir: Path | None = None) -> None:
        pytest.importorskip("psycopg")
        bindir = bindir or pg_bin()
        if bindir is None:
            pytest.skip("PostgreSQL is not installed")
        self.bindir = bindir
        self.data = root / "data"
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("PostgreSQL refuses to run as root and runuser is missing")
            shutil.chown(root, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self.prefix, str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, cwd=root,
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        import psycopg

        self.proc = subprocess.Popen(
            [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.data.parent,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres", connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                assert self.proc.poll() is None, "PostgreSQL exited"
                assert time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # pg_ctl as the server's own user (a signal to `runuser` would not reach the server)
            subprocess.run(
                [*self.prefix, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
                capture_output=True, cwd=self.data.parent, check=False,
            )  # fmt: skip
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def running_postgres(prefix: str = "sluicegate-pg-", bindir: Path | None = None) -> Iterator[Postgres]:
    """A server for as long as the block runs, in a folder of its own (not under pytest's
    temporary folder: the `postgres` user must be able to reach it)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = Postgres(root, bindir)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server: Postgres, prefix: str = "t") -> str:
    """The SQLAlchemy URL of a new, empty database on `server`."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"
