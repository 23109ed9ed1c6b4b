"""Runs inside a sandbox: the `filesystem` tools, confined to /workspace (standard library only).

Names and arguments are those of AgentScope Runtime's filesystem sandbox (the MCP filesystem
server's). Every path is resolved with realpath and refused when it leaves the workspace (`..`,
absolute paths, symlinks planted inside pointing out); non-UTF-8 content is refused, not mangled.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil

WORKSPACE = "/workspace"
OUTPUT_CAP = 64 * 1024  # characters per output; more is cut with a note
READ_LIMIT = 16 << 20  # bytes: a larger file is refused before it is read into memory
TREE_LIMIT = 2000  # entries in a directory_tree answer


def cap(text: str) -> str:
    """`text` up to OUTPUT_CAP characters, with a note saying how much was cut."""
    if len(text) <= OUTPUT_CAP:
        return text
    return text[:OUTPUT_CAP] + f"\n[output cut at {OUTPUT_CAP} characters of {len(text)}]"


def path(relative: str) -> str:
    """The real path of `relative` under the workspace; PermissionError when it leaves it."""
    if not isinstance(relative, str):
        raise TypeError(f"a path must be a string, got {relative!r}")
    full = os.path.realpath(os.path.join(WORKSPACE, relative))
    if full != WORKSPACE and not full.startswith(WORKSPACE + "/"):
        raise PermissionError(
            f"path {relative!r} leaves the workspace: give a path inside {WORKSPACE}"
        )
    return full


def text_of(relative: str) -> str:
    """A file's text; refused when it is too large or not UTF-8 (binary)."""
    full = path(relative)
    size = os.path.getsize(full)
    if size > READ_LIMIT:
        raise ValueError(
            f"file {relative!r} is {size} bytes, over the {READ_LIMIT}-byte read limit: read a"
            " part of it with run_shell_command (head, tail, grep)"
        )
    with open(full, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"file {relative!r} is not UTF-8 text ({size} bytes, binary?): inspect it with"
            " get_file_info or run_shell_command (file, xxd)"
        ) from None


def read_multiple_files(paths: list[str]) -> str:
    """Each file's text under its path; a file that fails shows its error, the others still read."""
    if not isinstance(paths, list) or not paths:
        raise ValueError(f"paths must be a non-empty list of paths, got {paths!r}")
    parts = []
    for each in paths:
        try:
            parts.append(f"{each}:\n{text_of(each)}\n")
        except Exception as exc:
            parts.append(f"{each}: Error - {type(exc).__name__}: {exc}")
    return cap("\n---\n".join(parts))


def edit_file(relative: str, edits: list[dict], dry_run: bool) -> str:
    """Apply each {oldText, newText} in turn; a git-style diff; written unless `dry_run`."""
    if not isinstance(edits, list) or not edits:
        raise ValueError(f"edits must be a non-empty list of {{oldText, newText}}, got {edits!r}")
    before = text_of(relative)
    after = before
    for number, edit in enumerate(edits, 1):
        if not (isinstance(edit, dict) and {"oldText", "newText"} <= edit.keys()):
            raise ValueError(f"edit {number} must have oldText and newText, got {edit!r}")
        old, new = edit["oldText"], edit["newText"]
        if not old or old not in after:
            raise ValueError(
                f"edit {number}: oldText {old[:80]!r} is not in {relative!r}: copy the exact"
                " text (read_file) and try again"
            )
        after = after.replace(old, new, 1)
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=relative,
            tofile=relative,
        )
    )
    if not dry_run:
        with open(path(relative), "w", encoding="utf-8") as f:
            f.write(after)
    return cap("```diff\n" + diff + "```\n")


def directory_tree(relative: str) -> str:
    """The tree under `relative` as JSON: [{name, type, children}]; symlinks are not followed."""
    count = 0

    def walk(full: str) -> list[dict]:
        nonlocal count
        entries = []
        for entry in sorted(os.scandir(full), key=lambda e: e.name):
            count += 1
            if count > TREE_LIMIT:
                raise ValueError(
                    f"directory_tree of {relative!r} has over {TREE_LIMIT} entries: ask for a"
                    " subdirectory, or use search_files"
                )
            if entry.is_dir(follow_symlinks=False):
                children = walk(entry.path)
                entries.append({"name": entry.name, "type": "directory", "children": children})
            else:
                entries.append({"name": entry.name, "type": "file"})
        return entries

    return cap(json.dumps(walk(path(relative)), indent=2))


def search_files(relative: str, pattern: str, exclude: list[str]) -> str:
    """Paths under `relative` whose names contain `pattern` (case-insensitive), minus excluded."""
    root, needle = path(relative), str(pattern).lower()
    skip = [str(e).lower() for e in exclude or []]
    hits = []
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not any(s in d.lower() for s in skip)]
        for name in dirs + files:
            if needle in name.lower() and not any(s in name.lower() for s in skip):
                hits.append(os.path.relpath(os.path.join(base, name), WORKSPACE))
    return cap("\n".join(sorted(hits)) or "no matches")


def handle(op: str, a: dict) -> str | None:
    """Run the filesystem operation `op`; None when `op` is not one."""
    if op == "read_file":
        return cap(text_of(a["path"]))
    if op == "read_multiple_files":
        return read_multiple_files(a["paths"])
    if op == "write_file":
        with open(path(a["path"]), "w", encoding="utf-8") as f:
            f.write(a["content"])
        return f"wrote {len(a['content'])} characters to {a['path']}"
    if op == "edit_file":
        return edit_file(a["path"], a["edits"], bool(a.get("dryRun")))
    if op == "list_directory":
        full = path(a["path"])
        names = sorted(os.listdir(full))
        return cap(
            "\n".join(
                ("[DIR] " if os.path.isdir(os.path.join(full, n)) else "[FILE] ") + n for n in names
            )
        )
    if op == "directory_tree":
        return directory_tree(a["path"])
    if op == "create_directory":
        os.makedirs(path(a["path"]), exist_ok=True)
        return f"created directory {a['path']}"
    if op == "move_file":
        source, destination = path(a["source"]), path(a["destination"])
        if os.path.exists(destination):
            raise FileExistsError(f"destination {a['destination']!r} exists: move it away first")
        shutil.move(source, destination)
        return f"moved {a['source']} to {a['destination']}"
    if op == "search_files":
        return search_files(a["path"], a["pattern"], a.get("excludePatterns") or [])
    if op == "get_file_info":
        full = path(a["path"])
        st = os.stat(full)
        kind = "directory" if os.path.isdir(full) else "file"
        return json.dumps({"size": st.st_size, "modified": st.st_mtime, "type": kind})
    if op == "list_allowed_directories":
        return f"Allowed directories:\n{WORKSPACE}"
    return None
