"""`env://NAME`: a secret in the gateway's environment."""

from __future__ import annotations

import os

from sluicegate.vault import SecretUnavailable
from sluicegate.vault.refs import describe


class EnvBackend:
    """Reads `env://NAME` from the process environment."""

    def read(self, ref: str) -> str:
        """The variable's value; unset or empty fails closed."""
        name = ref.removeprefix("env://")
        value = os.environ.get(name)
        if not value:
            raise SecretUnavailable(f"secret reference {describe(ref)} is not set")
        return value
