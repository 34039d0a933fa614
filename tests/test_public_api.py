"""The public surface of the package is deliberate: `__all__` lists exactly what is exported."""

from __future__ import annotations

import sluicegate

EXPECTED = ["ConfigInvalid", "Gateway", "SluicegateError", "__version__", "build_app", "load_config"]


def test_all_is_the_public_surface() -> None:
    assert sorted(sluicegate.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(sluicegate, name) is not None
