"""`aws-sm://name` and `aws-sm://name#field`: AWS Secrets Manager through `boto3` (extra `aws`).

Credentials come from the standard AWS chain (environment, profile, instance role); region and
endpoint from `vault.aws`. Calls block, so the vault runs them on a worker thread.
"""

from __future__ import annotations

import json
import logging
import threading

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sluicegate.config.model import AwsSecretsConfig
from sluicegate.vault import SecretUnavailable

# Bounded so a hung endpoint ties up a worker thread for seconds, not the SDK's default minutes.
_CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"})


def _no_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


class AwsBackend:
    """Reads Secrets Manager secrets; `#field` picks one key of a JSON secret."""

    def __init__(self, config: AwsSecretsConfig) -> None:
        self.config = config
        self._client: object | None = None
        self._lock = threading.Lock()
        # botocore logs every response body at DEBUG, a secret value included: never let it through.
        logging.getLogger("botocore.parsers").addFilter(_no_debug)

    def _secretsmanager(self) -> object:
        # boto3 clients are thread-safe once made, but making one is not: build it once, locked.
        with self._lock:
            if self._client is None:
                self._client = boto3.session.Session().client(
                    "secretsmanager",
                    region_name=self.config.region,
                    endpoint_url=self.config.endpoint_url,
                    config=_CLIENT_CONFIG,
                )
            return self._client

    def read(self, ref: str) -> str:
        """The secret's string (or one JSON field of it); any failure fails closed."""
        name, _, field = ref.removeprefix("aws-sm://").partition("#")
        where = f"aws-sm://{name}"
        try:
            answer = self._secretsmanager().get_secret_value(SecretId=name)  # type: ignore[attr-defined]
        except ClientError as exc:
            # The error code (`ResourceNotFoundException`, `AccessDeniedException`) names the cause.
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise SecretUnavailable(f"secret reference {where} cannot be read ({code})") from None
        except BotoCoreError as exc:
            raise SecretUnavailable(f"secret reference {where} cannot be read ({type(exc).__name__})") from None
        value = answer.get("SecretString")
        if value is None:
            binary = answer.get("SecretBinary")
            try:
                value = binary.decode() if isinstance(binary, bytes) else None
            except UnicodeDecodeError:
                value = None
        if not isinstance(value, str) or not value:
            raise SecretUnavailable(f"secret reference {where} holds no text value")
        return _pick_field(value, field, where) if field else value


def _pick_field(value: str, field: str, where: str) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        raise SecretUnavailable(f"secret reference {where} is not JSON, so #{field} cannot be read") from None
    picked = data.get(field) if isinstance(data, dict) else None
    if not isinstance(picked, str) or not picked:
        raise SecretUnavailable(f"secret reference {where} has no text field '{field}'")
    return picked
