"""The process that runs inside a session's sandbox: one JSON request per line on stdin.

It is started by `agentqueue.workers.sandbox` under bwrap with `python -I -S`, so it may use the
standard library only (the worker's virtualenv is not mounted). Python cells share one globals
dict for the sandbox's life: variables persist across the calls of a session. Every path is
resolved under the workspace and refused when it leaves it (`..`, absolute paths, symlinks).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import traceback

WORKSPACE = "/workspace"
OUTPUT_CAP = 64 * 1024  # characters per output stream; more is cut with a note


def _cap(text: str) -> str:
    if len(text) <= OUTPUT_CAP:
        return text
    return text[:OUTPUT_CAP] + f"\n[output cut at {OUTPUT_CAP} characters of {len(text)}]"


def _path(relative: str) -> str:
    full = os.path.realpath(os.path.join(WORKSPACE, relative))
    if full != WORKSPACE and not full.startswith(WORKSPACE + "/"):
        raise PermissionError(
            f"path {relative!r} leaves the workspace: give a path inside {WORKSPACE}"
        )
    return full


def _limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        resource.setrlimit(which, (value, value))


def run_python(code: str, scope: dict[str, object]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile(code, "<cell>", "exec"), scope)
        except BaseException:  # the cell's own error is its output, as in IPython
            traceback.print_exc()
    return _cap(out.getvalue())


def run_shell(command: str) -> str:
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=WORKSPACE,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    text = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.stderr else "")
    return _cap(text) + (f"\n[exit code {done.returncode}]" if done.returncode else "")


def handle(request: dict[str, object], scope: dict[str, object]) -> str:
    op = request["op"]
    a = request.get("args", {})
    assert isinstance(a, dict)
    if op == "run_ipython_cell":
        return run_python(a["code"], scope)
    if op == "run_shell_command":
        return run_shell(a["command"])
    if op == "read_file":
        with open(_path(a["path"]), encoding="utf-8") as f:
            return _cap(f.read())
    if op == "write_file":
        with open(_path(a["path"]), "w", encoding="utf-8") as f:
            f.write(a["content"])
        return f"wrote {len(a['content'])} characters to {a['path']}"
    if op == "list_directory":
        full = _path(a["path"])
        names = sorted(os.listdir(full))
        return "\n".join(
            ("[DIR] " if os.path.isdir(os.path.join(full, n)) else "[FILE] ") + n for n in names
        )
    if op == "create_directory":
        os.makedirs(_path(a["path"]), exist_ok=True)
        return f"created directory {a['path']}"
    if op == "move_file":
        shutil.move(_path(a["source"]), _path(a["destination"]))
        return f"moved {a['source']} to {a['destination']}"
    if op == "search_files":
        root, pattern = _path(a["path"]), str(a["pattern"]).lower()
        hits = []
        for base, dirs, files in os.walk(root):
            for n in dirs + files:
                if pattern in n.lower():
                    hits.append(os.path.relpath(os.path.join(base, n), WORKSPACE))
        return "\n".join(sorted(hits)) or "no matches"
    if op == "get_file_info":
        st = os.stat(_path(a["path"]))
        kind = "directory" if os.path.isdir(_path(a["path"])) else "file"
        return json.dumps({"size": st.st_size, "modified": st.st_mtime, "type": kind})
    raise ValueError(f"unknown sandbox operation {op!r}")


def main() -> None:
    _limits(json.loads(sys.argv[1]))
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")  # cells' prints never reach it
    scope: dict[str, object] = {"__name__": "__main__"}
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, "output": handle(request, scope)}
        except Exception as exc:
            reply = {"ok": False, "output": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
