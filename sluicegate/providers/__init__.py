"""Upstream adapters, one module per provider family; see `base` for the contract."""

from __future__ import annotations

from sluicegate.providers.base import Preset, Provider, provider_types, register_provider_type

__all__ = ["Preset", "Provider", "provider_types", "register_provider_type"]
