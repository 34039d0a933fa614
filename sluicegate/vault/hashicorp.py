"""`vault://path#field`: a HashiCorp Vault KV v2 secret, read with `hvac` (extra `hashicorp`).

The Vault token is itself a reference (`env://VAULT_TOKEN`, `file:///...`) resolved through the
gateway's vault, so a renewed token file is picked up like any rotated key.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import hvac
import hvac.exceptions

from sluicegate.config.model import HashicorpVaultConfig
from sluicegate.vault import SecretUnavailable

if TYPE_CHECKING:
    from sluicegate.vault import Vault

#: seconds for one Vault HTTP call; it runs on a worker thread, which a hung server would hold
TIMEOUT_S = 10


class HashicorpBackend:
    """Reads KV v2 secrets under `config.mount`; `#field` names the key inside the secret's data."""

    def __init__(self, config: HashicorpVaultConfig, vault: Vault) -> None:
        self.config = config
        self.vault = vault
        self._client: hvac.Client | None = None
        self._token: str | None = None
        self._lock = threading.Lock()

    def _kv(self) -> hvac.Client:
        token = self.vault.resolve(self.config.token)
        with self._lock:
            if self._client is None or token != self._token:
                # No redirects: the token travels in a custom header that a redirect would carry along.
                self._client = hvac.Client(
                    url=self.config.url,
                    token=token,
                    namespace=self.config.namespace,
                    timeout=TIMEOUT_S,
                    allow_redirects=False,
                )
                self._token = token
            return self._client

    def read(self, ref: str) -> str:
        """One field of the secret (or its only field); any failure fails closed."""
        path, _, field = ref.removeprefix("vault://").partition("#")
        where = f"vault://{path}"
        client = self._kv()
        try:
            answer = client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.config.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.VaultError as exc:
            # `Forbidden`, `InvalidPath` ... name the cause; the exception text may echo the server.
            raise SecretUnavailable(f"secret reference {where} cannot be read ({type(exc).__name__})") from None
        except OSError as exc:  # requests' errors (connection refused, timeout) are OSErrors
            raise SecretUnavailable(f"secret reference {where} cannot be read ({type(exc).__name__})") from None
        data = answer.get("data", {}).get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise SecretUnavailable(f"secret reference {where} is not a KV v2 secret")
        if not field:
            if len(data) != 1:
                raise SecretUnavailable(f"secret reference {where} has {len(data)} fields; name one with #field")
            field = next(iter(data))
        value = data.get(field)
        if not isinstance(value, str) or not value:
            raise SecretUnavailable(f"secret reference {where} has no text field '{field}'")
        return value
