"""The admin plane: a listener apart from the data plane, loopback-only unless configured.

Today it serves `/metrics`, `/healthz` and `/readyz` (`server.py`); its settings are the `admin:`
section (`config.py`).
"""
