"""Process settings: where the gateway keeps its data, read from the environment.

`SLUICEGATE_DATA_DIR` (default `./.sluicegate`) holds the SQLite database and demo files;
`SLUICEGATE_DATABASE_URL` overrides the database for every command; `SLUICEGATE_INSTANCE_ID` names
this process in the audit events it writes (default: host name and process id).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sluicegate.store.db import default_url


@dataclass(frozen=True, slots=True)
class Settings:
    """Where state lives; the declarative gateway config is `config/`."""

    data_dir: Path
    database_url: str | None = None
    #: names this gateway process in its audit events (None: `host:pid`)
    instance_id: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from `SLUICEGATE_*` environment variables."""
        return cls(
            data_dir=Path(os.environ.get("SLUICEGATE_DATA_DIR", ".sluicegate")),
            database_url=os.environ.get("SLUICEGATE_DATABASE_URL") or None,
            instance_id=os.environ.get("SLUICEGATE_INSTANCE_ID") or None,
        )

    def db_url(self, config_url: str | None = None) -> str:
        """The database URL: environment first, then the config file, then SQLite in the data folder."""
        return self.database_url or config_url or default_url(self.data_dir)

    def instance(self) -> str:
        """This process's name in the audit trail: `instance_id`, else `host:pid`, at most 128
        characters (a worker of `serve --workers` calls it after the fork: its own pid)."""
        name = self.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        return name[:128]
