"""Guardrails: content checks on every text a model reads or writes; one module per guard kind."""
