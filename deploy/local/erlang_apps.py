"""Which Erlang applications a RabbitMQ node needs, read from their `.app` files."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def _app_deps(app_file: Path) -> list[str]:
    text = app_file.read_text(errors="replace")
    deps: list[str] = []
    for key in ("applications", "included_applications", "optional_applications"):
        match = re.search(rf"\{{\s*{key}\s*,\s*\[([^\]]*)\]", text)
        if match:
            deps += [a.strip().strip("'") for a in match.group(1).split(",") if a.strip()]
    return deps


def needed_apps(plugins_dir: Path, roots: Sequence[str]) -> list[Path] | None:
    """Return the dirs of roots and of the apps they need from plugins_dir, or None if unsure."""
    apps: dict[str, Path] = {}
    for entry in plugins_dir.iterdir():
        if (entry / "ebin").is_dir():
            apps.setdefault(entry.name.rsplit("-", 1)[0], entry)
    wanted: list[str] = []
    todo = list(roots)
    while todo:
        app = todo.pop()
        if app in wanted or app not in apps:
            continue  # not a RabbitMQ app: Erlang/OTP has it on its default path
        app_file = apps[app] / "ebin" / f"{app}.app"
        if not app_file.exists():
            return None
        wanted.append(app)
        todo += _app_deps(app_file)
    if "rabbit" not in wanted or "rabbitmq_prelaunch" not in wanted:
        return None
    return [apps[a] for a in sorted(wanted)]


def link_apps(apps: Sequence[Path], link_dir: Path) -> None:
    """Make link_dir hold symlinks to exactly these app dirs."""
    link_dir.mkdir(parents=True, exist_ok=True)
    for old in link_dir.iterdir():
        old.unlink()
    for app in apps:
        (link_dir / app.name).symlink_to(app, target_is_directory=True)
