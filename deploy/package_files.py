"""Which files of a source tree may go into a deployment package, and why the others may not.

A tree (the app's package, a part of agentqueue) is walked without following symlinks, and a
file is left out, with the reason, when it is:

- a secret by its name: `.env` and `.env.*`, `*.env`, credential files (`credentials*`,
  `.netrc`, `.pgpass`, `.pypirc`, `.npmrc`, `.git-credentials`, `.htpasswd`, SSH keys,
  `*.pem`, `*.key`, `*.p12`, `*.pfx`, `*.jks`, `*.tfstate`, `secrets.json|yaml|toml|…`), or
  inside `.ssh/`, `.aws/`, `.gnupg/`, `.docker/`, `.kube/`, `.azure/`; Python sources are
  never taken for secrets by their name (`credentials.py` is code);
- inside a version-control folder (`.git`, `.hg`, `.svn`, `.bzr`, `_darcs`, `.jj`, `CVS`);
- ignored by a `.gitignore` (those inside the tree, and those of the enclosing repository
  between its root and the tree), with git's rules: last match wins, `!` re-includes, a
  trailing `/` matches folders, a `/` elsewhere anchors the pattern, `*`, `?`, `[…]`, `**`;
- a symlink that leads out of the tree (or nowhere), or not a regular file.

Caches (`__pycache__`, `.pytest_cache`, …), bytecode and `.gitignore`-like files stay out too,
without a mention.
Installed trees (under `site-packages`) get the name rules but not the repository's
`.gitignore`: they are not part of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VCS_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs", ".jj", "CVS"})
CACHE_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}
)
SECRET_DIRS = frozenset({".ssh", ".aws", ".gnupg", ".docker", ".kube", ".azure"})
_SECRET_NAME = re.compile(
    r"""(?ix)
    \.env(\..*)? | .*\.env | \.envrc
    | .*credential.* | \.netrc | _netrc | \.pgpass | \.pypirc | \.npmrc | \.htpasswd
    | \.dockercfg | id_(rsa|dsa|ecdsa|ed25519)(\.pub)?
    | .*\.(pem|key|p12|pfx|jks|keystore|kdbx|ppk|tfstate|tfstate\.backup)
    | secrets?\.(json|ya?ml|toml|ini|env|txt|cfg|conf)
    """
)
_BYTECODE = (".pyc", ".pyo")
_VCS_FILES = frozenset({".gitignore", ".gitattributes", ".gitmodules", ".hgignore"})


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path left out of the package, and why."""

    path: str  # as it would have been named in the package; folders end with `/`
    reason: str


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    negate: bool
    dir_only: bool
    base: Path  # the folder of the .gitignore the rule is from
    source: str  # where it was written, for the reason shown


def secret_reason(name: str) -> str | None:
    """Why a file of this name is a secret, or None."""
    if name.startswith(".env") or name.endswith(".env") or name == ".envrc":
        return "a .env file: environments hold secrets"
    if name.endswith(".py"):
        return None
    if _SECRET_NAME.fullmatch(name):
        return "a credential or key file by its name"
    return None


class GitIgnore:
    """The rules of a stack of .gitignore files; `ignored` says which rule excludes a path."""

    def __init__(self, rules: tuple[_Rule, ...] = ()) -> None:
        self._rules = rules

    def with_file(self, path: Path) -> GitIgnore:
        """These rules followed by those of the .gitignore at `path` (when it exists)."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return self
        rules = [
            rule
            for number, line in enumerate(text.splitlines(), 1)
            if (rule := _parse(line, path.parent, f"{path}:{number}")) is not None
        ]
        return GitIgnore((*self._rules, *rules)) if rules else self

    def ignored(self, path: Path, is_dir: bool) -> str | None:
        """The rule (`file:line`) that leaves `path` out, or None when it is kept."""
        decided: _Rule | None = None
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            try:
                relative = path.relative_to(rule.base).as_posix()
            except ValueError:
                continue
            if rule.pattern.fullmatch(relative):
                decided = rule
        return decided.source if decided is not None and not decided.negate else None


def _parse(line: str, base: Path, source: str) -> _Rule | None:
    line = line.rstrip("\n")
    if not line.endswith("\\ "):
        line = line.rstrip(" ")
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith("\\"):
        line = line[1:]  # `\#` and `\!` start a pattern with that character
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    body = _glob_to_regex(line)
    pattern = body if anchored else f"(?:.*/)?{body}"
    return _Rule(re.compile(pattern, re.DOTALL), negate, dir_only, base, source)


def _glob_to_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := glob.find("]", i + 2)) > 0:
            inner = glob[i + 1 : end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append(f"[{inner.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def repository_ignores(root: Path) -> GitIgnore:
    """The .gitignore rules of the repository enclosing `root`, from its top down to `root`."""
    if "site-packages" in root.parts or "dist-packages" in root.parts:
        return GitIgnore()
    chain = [root, *root.parents]
    top = next((p for p in chain if (p / ".git").exists()), None)
    if top is None:
        return GitIgnore()
    ignores = GitIgnore()
    for folder in reversed(chain[: chain.index(top) + 1]):
        if folder != root:  # the tree's own .gitignore is read by the walk
            ignores = ignores.with_file(folder / ".gitignore")
    return ignores


def tree_files(root: Path, prefix: str) -> Iterator[tuple[str, Path] | Skipped]:
    """Each file of the tree at `root` as (name in the package, path), or why it is left out."""
    root = root.resolve()
    yield from _walk(root, root, prefix, repository_ignores(root))


def _walk(
    root: Path, folder: Path, prefix: str, ignores: GitIgnore
) -> Iterator[tuple[str, Path] | Skipped]:
    ignores = ignores.with_file(folder / ".gitignore")
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(_name(root, folder, prefix) + "/", f"cannot be read: {exc.strerror}")
        return
    for entry in entries:
        path = Path(entry.path)
        name = _name(root, path, prefix)
        is_link = entry.is_symlink()
        is_dir = entry.is_dir(follow_symlinks=False)
        quiet = entry.name.endswith(_BYTECODE) or entry.name in _VCS_FILES
        if entry.name in CACHE_DIRS if is_dir else quiet:
            continue  # caches, bytecode, ignore files: not worth a line in the report
        reason = _dir_reason(entry.name) if is_dir else _file_reason(entry.name)
        if reason is None:
            rule = ignores.ignored(path, is_dir)
            if rule is not None:
                reason = f"ignored by {rule}"
        if reason is not None:
            yield Skipped(name + ("/" if is_dir else ""), reason)
        elif is_dir:
            yield from _walk(root, path, prefix, ignores)
        elif is_link:
            yield _link(root, path, name)
        elif entry.is_file(follow_symlinks=False):
            yield name, path
        else:
            yield Skipped(name, "not a regular file")


def _link(root: Path, path: Path, name: str) -> tuple[str, Path] | Skipped:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return Skipped(name, "a symlink that leads nowhere")
    if not target.is_relative_to(root):
        return Skipped(name, f"a symlink out of the tree (to {target})")
    if target.is_dir():
        return Skipped(name + "/", "a symlink to a folder of the tree (packaged where it is)")
    if not target.is_file():
        return Skipped(name, "a symlink to something that is not a regular file")
    reason = _file_reason(target.name)
    return Skipped(name, f"a symlink to {reason}") if reason else (name, target)


def _dir_reason(name: str) -> str | None:
    if name in VCS_DIRS:
        return "a version-control folder"
    if name in SECRET_DIRS:
        return "a folder of credentials"
    return None


def _file_reason(name: str) -> str | None:
    if name == ".git":  # a worktree's or submodule's pointer file
        return "a version-control file"
    return secret_reason(name)


def _name(root: Path, path: Path, prefix: str) -> str:
    relative = path.relative_to(root).as_posix()
    return f"{prefix}/{relative}" if relative != "." else prefix
