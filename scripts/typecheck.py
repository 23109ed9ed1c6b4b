"""Run mypy on the installed package layout and exit non-zero on any error.

The package maps `agentqueue.protocol`, `.broker`, `.workers` and `.deploy` to top-level folders
(pyproject `[tool.setuptools] package-dir`), which the editable install serves through an import
hook that mypy cannot follow. So this builds a tree of links under build/typecheck/ that looks like
the installed package, points mypy at it, and prints paths as they are in the repository.

Usage: uv run --frozen python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
# Typed checks of the public API as a user writes against it (assert_type on decorated functions).
CHECK_FILES = ["tests/typing"]


def package_dirs() -> dict[str, Path]:
    """The package-dir mapping of pyproject.toml: dotted package name to source folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in mapping.items()}


def build_tree() -> dict[Path, Path]:
    """Lay out links to the source folders as installed; return tree path to source path."""
    shutil.rmtree(TREE, ignore_errors=True)
    links: dict[Path, Path] = {}
    for name, source in sorted(package_dirs().items(), key=lambda item: item[0].count(".")):
        target = TREE.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if entry.name == "__pycache__" or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry)
            links[target / entry.name] = entry
    return links


def repo_path(line: str, links: dict[Path, Path]) -> str:
    """Rewrite a mypy line that names a file in the tree to name it in the repository."""
    prefix = os.path.relpath(TREE, Path.cwd()) + os.sep
    if not line.startswith(prefix):
        return line
    parts = Path(line.split(":", 1)[0]).parts
    for depth in range(len(parts), 0, -1):
        source = links.get(Path.cwd() / Path(*parts[:depth]))
        if source is not None:
            rest = Path(*parts[depth:]) if depth < len(parts) else Path()
            repo = os.path.relpath(source / rest, Path.cwd())
            return repo + line[len(os.path.join(*parts)) :]
    return line


def main() -> int:
    links = build_tree()
    os.chdir(ROOT)
    args = ["--config-file", "pyproject.toml", *sys.argv[1:]]
    if not any(not arg.startswith("-") for arg in sys.argv[1:]):
        args += [os.path.relpath(TREE / "agentqueue"), *CHECK_FILES]
    env_path = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = os.pathsep.join(p for p in (str(TREE), env_path) if p)
    stdout, stderr, status = api.run(args)
    for line in stdout.splitlines():
        print(repo_path(line, links))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
