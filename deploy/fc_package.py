"""`agentqueue deploy fc --package`: the code zip Function Compute runs.

Layout (FC unpacks it to /code, which is on `sys.path`):

    agentqueue/                  the package, with protocol/, broker/, workers/, deploy/ inside
    <app package or module>      e.g. examples/ for `examples.weather:app`
    <dependencies>               installed for FC's runtime: Python 3.12 on manylinux2014 x86_64

That list is all that goes in: nothing else from the working folder. Within the two source
trees, secrets, version-control folders, caches, what `.gitignore` ignores and symlinks out of
the tree stay out (`package_files` has the rules); the report names every file that went in
and everything left out, with the reason.

Dependencies are agentqueue's own requirements, pinned to the versions installed here (so the
function runs what was tested), installed with `uv pip install --target` for the FC platform,
wheels only: FC cannot build a source distribution, so one without a matching wheel is an error
that names it. The zip is deterministic (sorted entries, fixed timestamps): the same inputs give
the same bytes, so `--apply` can tell from its digest whether the code changed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agentqueue.deploy.fc_plan import PYTHON_VERSION, DeployError
from agentqueue.deploy.package_files import Skipped, tree_files

PLATFORM = "manylinux2014_x86_64"
UV_PLATFORM = "x86_64-manylinux2014"
# Where each part of agentqueue lives in the zip; in a checkout they are separate top-level
# folders mapped by pyproject.toml, so each is located through its import.
# deploy/ goes in too although the function never imports it: it is small, and leaving out part
# of the package would break the function the day something imports it at module level.
PACKAGES = (
    "agentqueue",
    "agentqueue.protocol",
    "agentqueue.broker",
    "agentqueue.workers",
    "agentqueue.deploy",
)
_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_NO_WHEEL = re.compile(
    r"no (matching )?wheels?|only (has )?source|no matching distribution"
    r"|not compatible|unsupported platform",
    re.IGNORECASE,
)
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PackageReport:
    """The zip that was written."""

    path: Path
    files: int
    size: int
    sha256: str
    dependencies: tuple[str, ...]  # requirements installed into it; empty with --no-deps
    sources: tuple[str, ...] = ()  # files from agentqueue and the app, as named in the zip
    skipped: tuple[Skipped, ...] = ()  # what the source trees held that was left out
    dependency_files: int = 0

    def listing(self) -> str:
        """What went in and what was left out (and why), then the summary line."""
        lines = [f"from agentqueue and the app ({len(self.sources)} files):"]
        lines += [f"  {name}" for name in self.sources]
        if self.dependencies:
            lines.append(
                f"dependencies ({self.dependency_files} files, for Python {PYTHON_VERSION}"
                f" {PLATFORM}):"
            )
            lines += [f"  {requirement}" for requirement in self.dependencies]
        if self.skipped:
            lines.append(f"left out ({len(self.skipped)}):")
            lines += [f"  {s.path}  ({s.reason})" for s in self.skipped]
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for people."""
        deps = (
            f", {len(self.dependencies)} requirements for Python {PYTHON_VERSION} {PLATFORM}"
            if self.dependencies
            else ", no dependencies (--no-deps)"
        )
        return (
            f"wrote {self.path} ({self.files} files, {self.size / 1e6:.1f} MB{deps});"
            f" sha256 {self.sha256}"
        )


def build_package(app: str, output: str | Path, *, with_deps: bool = True) -> PackageReport:
    """Write the code zip for `app` (module:attribute) to `output`."""
    files: dict[str, Path] = {}
    skipped: list[Skipped] = []
    for name in PACKAGES:
        root = _package_dir(name)
        _add_tree(files, skipped, root, name.replace(".", "/"))
    module = app.partition(":")[0]
    top = module.split(".")[0]
    if top != "agentqueue":
        _add_app(files, skipped, top, app)
    sources = tuple(sorted(files))
    requirements: tuple[str, ...] = ()
    with tempfile.TemporaryDirectory(prefix="agentqueue-fc-") as staging:
        if with_deps:
            # Wheels from the index, not files of this machine: only caches are left out
            # (a dependency may need its *.pem, e.g. certifi's CA bundle).
            requirements = pinned_requirements()
            install_dependencies(requirements, Path(staging))
            for path in sorted(Path(staging).rglob("*")):
                if path.is_file() and not _SKIP_PARTS.intersection(path.parts):
                    files.setdefault(path.relative_to(staging).as_posix(), path)
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_zip(out, files)
    data = out.read_bytes()
    return PackageReport(
        out,
        len(files),
        len(data),
        hashlib.sha256(data).hexdigest(),
        requirements,
        sources=sources,
        skipped=tuple(skipped),
        dependency_files=len(files) - len(sources),
    )


# Requirements an FC instance cannot use: Playwright drives Debian's Chromium, which FC's
# runtime does not have (its driver alone is ~160 MB of the zip). Browser sandboxes run on
# local tool workers.
NOT_FOR_FC = frozenset({"playwright"})


def pinned_requirements() -> tuple[str, ...]:
    """agentqueue's requirements for FC, each pinned to the version installed here when it is."""
    pinned = []
    for requirement in importlib.metadata.requires("agentqueue") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0]
        if name.lower() in NOT_FOR_FC:
            continue
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(requirement.split(";")[0].strip())
    return tuple(sorted(pinned))


def install_dependencies(requirements: tuple[str, ...], target: Path) -> None:
    """Install wheels for FC's Python and platform into `target`; names any without a wheel."""
    uv = shutil.which("uv")
    install = ["install", "--quiet", "--target", str(target), "--python-version", PYTHON_VERSION]
    if uv:
        command = [
            *(uv, "pip", *install),
            *("--python-platform", UV_PLATFORM, "--only-binary", ":all:"),
            *requirements,
        ]
    elif importlib.util.find_spec("pip") is not None:
        command = [
            *(sys.executable, "-m", "pip", *install),
            *("--platform", PLATFORM, "--implementation", "cp", "--only-binary=:all:"),
            *requirements,
        ]
    else:
        raise DeployError(
            "installing dependencies for FC needs uv (https://docs.astral.sh/uv/)"
            " or pip; install one, or build with --no-deps and add them yourself"
        )
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    if result.returncode == 0:
        return
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    missing = [line for line in lines if _NO_WHEEL.search(line)]
    if missing:
        raise DeployError(
            f"some dependencies have no wheel for FC's Python {PYTHON_VERSION} on {PLATFORM}"
            " (FC cannot build source distributions): "
            + " | ".join(missing[:8])
            + "; pin a version that ships one, or vendor a built copy into the zip"
        )
    raise DeployError(
        f"installing dependencies for FC failed ({' '.join(command[:3])} exited"
        f" {result.returncode}): " + " | ".join(lines[-8:])
    )


def _package_dir(name: str) -> Path:
    module = importlib.import_module(name)
    file: str | None = getattr(module, "__file__", None)
    if not file:
        raise DeployError(f"cannot locate package {name} on disk to put it in the zip")
    return Path(file).parent


def _add_app(files: dict[str, Path], skipped: list[Skipped], top: str, app: str) -> None:
    if os.getcwd() not in sys.path:  # like the CLI: an app next to you is importable
        sys.path.insert(0, os.getcwd())
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise DeployError(
            f"cannot find module {top!r} of app {app!r}: run from the folder that"
            " holds it, or put it on PYTHONPATH"
        )
    if spec.submodule_search_locations:
        _add_tree(files, skipped, Path(next(iter(spec.submodule_search_locations))), top)
    elif spec.origin and spec.origin.endswith(".py"):
        files[f"{top}.py"] = Path(spec.origin)
    else:
        raise DeployError(
            f"app module {top!r} is not Python source ({spec.origin}); the zip needs its .py files"
        )


def _add_tree(files: dict[str, Path], skipped: list[Skipped], root: Path, prefix: str) -> None:
    for found in tree_files(root, prefix):
        if isinstance(found, Skipped):
            if found not in skipped:
                skipped.append(found)
            continue
        arcname, path = found
        files.setdefault(arcname, path)


def _write_zip(out: Path, files: dict[str, Path]) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for arcname in sorted(files):
            path = files[arcname]
            info = zipfile.ZipInfo(arcname, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(path, os.X_OK) and path.suffix != ".py" else 0o644
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, path.read_bytes())
