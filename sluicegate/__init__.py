"""Sluicegate: an LLM gateway that authenticates, routes, accounts for and audits every call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluicegate.errors import SluicegateError

if TYPE_CHECKING:
    from sluicegate.app import Gateway, build_app
    from sluicegate.config.loader import ConfigInvalid, load_config

__version__ = "0.1.0"

__all__ = ["ConfigInvalid", "Gateway", "SluicegateError", "__version__", "build_app", "load_config"]

#: public names imported on first use: `import sluicegate.cli` (every command) does not build a gateway
_LAZY = {
    "Gateway": "sluicegate.app",
    "build_app": "sluicegate.app",
    "ConfigInvalid": "sluicegate.config.loader",
    "load_config": "sluicegate.config.loader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
