"""Every module of the package imports on its own: no circle that only an import order hides."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import agentqueue


def _modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(agentqueue.__path__, "agentqueue.")
        if not m.name.endswith("__main__")
    )


def test_every_module_imports_first_with_nothing_of_ours_imported_before_it() -> None:
    failures = []
    for name in _modules():
        for loaded in [m for m in sys.modules if m == "agentqueue" or m.startswith("agentqueue.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
