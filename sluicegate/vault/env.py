"""`env://NAME`: a secret in the gateway's environment."""

from __future__ import annotations

import os

from sluicegate.vault import SecretUnavailable


class EnvBackend:
    """Reads `env://NAME` from the process environment."""

    def read(self, ref: str) -> str:
        """The variable's value; unset or empty fails closed."""
        name = ref.removeprefix("env://")
        value = os.environ.get(name)
        if not value:
            raise SecretUnavailable(f"secret reference env://{name} is not set")
        return value
