"""What every upstream adapter provides, and the registry that maps a config `type` to one.

A provider turns a `Call` into the upstream HTTP request (URL, headers, body bytes) and the
upstream's failures into `UpstreamError`s. Credentials come from the vault at send time and are
attached by the provider's `auth_headers`, never stored on the call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from sluicegate.call import Call
    from sluicegate.config.model import ProviderConfig
    from sluicegate.errors import SluicegateError


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults of one member of a provider family: where it lives and whether it needs a key."""

    base_url: str | None
    needs_key: bool = True
    docs: str = ""


class Provider:
    """An upstream adapter, built once per config snapshot from its `ProviderConfig`."""

    #: the wire protocol this provider speaks natively (bodies pass through when they match)
    native_dialect: ClassVar[str] = ""
    supports_streaming: ClassVar[bool] = True

    def __init__(self, config: ProviderConfig, preset: Preset) -> None:
        self.config = config
        self.name = config.name
        self.type = config.type
        self.preset = preset
        self.base_url = (config.base_url or preset.base_url or "").rstrip("/")
        self.timeouts = config.timeouts

    def url_for(self, endpoint: str, model: str) -> str:
        """Absolute upstream URL of one endpoint (`chat/completions`, `embeddings` ...) for a model."""
        raise NotImplementedError

    def auth_headers(self, secret: str | None) -> dict[str, str]:
        """Request headers for this provider, credential included."""
        raise NotImplementedError

    def prepare_body(self, call: Call) -> bytes:
        """Body bytes for the upstream, built from the call's parsed body (never mutated)."""
        raise NotImplementedError

    def parse_error(self, status: int, body: bytes, retry_after: float | None, secret: str | None) -> SluicegateError:
        """Turn an upstream error response into an error that names this provider, never its key."""
        raise NotImplementedError


ProviderFactory = Callable[["ProviderConfig", Preset], Provider]


@dataclass(frozen=True, slots=True)
class ProviderType:
    """A registered `type:` value of the providers config."""

    name: str
    factory: ProviderFactory
    preset: Preset


_REGISTRY: dict[str, ProviderType] = {}


def register_provider_type(name: str, factory: ProviderFactory, preset: Preset) -> None:
    """Make `type: <name>` available in the providers config."""
    if name in _REGISTRY:
        raise ValueError(f"provider type {name!r} is registered twice")
    _REGISTRY[name] = ProviderType(name, factory, preset)


def provider_types() -> dict[str, ProviderType]:
    """Every registered provider type, built-ins first."""
    _load_builtins()
    return _REGISTRY


def _load_builtins() -> None:
    # Importing a provider module runs its registration lines.
    from sluicegate.providers import azure, openai  # noqa: F401
