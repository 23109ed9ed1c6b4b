"""Every module of the package imports on its own: no circle that only an import order hides."""

from __future__ import annotations

import subprocess
import sys

# Run in a process of its own: dropping our modules from sys.modules here would leave the rest of
# the suite holding classes that no longer match the modules' (an `App` that is not an `App`).
CHECK = """
import importlib, pkgutil, sys
import agentqueue
names = sorted(
    m.name for m in pkgutil.walk_packages(agentqueue.__path__, "agentqueue.")
    if not m.name.endswith("__main__")
)
failures = []
for name in names:
    for loaded in [m for m in sys.modules if m == "agentqueue" or m.startswith("agentqueue.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failures.append(f"{name}: {exc}")
print("\\n".join(failures) or f"{len(names)} modules")
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_first_with_nothing_of_ours_imported_before_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
