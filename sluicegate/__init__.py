"""Sluicegate: an LLM gateway that authenticates, routes, accounts for and audits every call."""

from __future__ import annotations

from sluicegate.app import Gateway, build_app
from sluicegate.config.loader import ConfigInvalid, load_config
from sluicegate.errors import SluicegateError

__version__ = "0.1.0"

__all__ = ["ConfigInvalid", "Gateway", "SluicegateError", "__version__", "build_app", "load_config"]
