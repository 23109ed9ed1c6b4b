"""The filesystem tools AgentScope Runtime has beyond read/write: run in a real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

from tests.workers.test_sandbox import bwrap, close_all, harness, sandboxed_app

__all__ = ["bwrap"]  # the fixture that fails (under CI) when bubblewrap is missing


async def test_the_extra_file_tools_read_many_edit_with_a_diff_draw_the_tree_and_stay_inside(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1") as (h, _):
            await h.call("s-fs", "create_directory", path="data/raw")
            await h.call("s-fs", "write_file", path="data/a.txt", content="alpha\nbeta\n")
            await h.call("s-fs", "write_file", path="data/raw/b.txt", content="bee\n")
            many = await h.call(
                "s-fs", "read_multiple_files", paths=["data/a.txt", "../x", "data/raw/b.txt"]
            )
            assert many.output == (
                "data/a.txt:\nalpha\nbeta\n\n\n---\n../x: Error - PermissionError: path '../x'"
                " leaves the workspace: give a path inside /workspace\n---\n"
                "data/raw/b.txt:\nbee\n\n"
            )
            edits = [{"oldText": "beta", "newText": "gamma"}]
            dry = await h.call("s-fs", "edit_file", path="data/a.txt", edits=edits, dryRun=True)
            diff = (
                "```diff\n--- data/a.txt\n+++ data/a.txt\n@@ -1,2 +1,2 @@\n alpha\n-beta\n"
                "+gamma\n```\n"
            )
            assert (dry.ok, dry.output) == (True, diff)
            unchanged = await h.call("s-fs", "read_file", path="data/a.txt")
            assert unchanged.output == "alpha\nbeta\n"
            done = await h.call("s-fs", "edit_file", path="data/a.txt", edits=edits)
            assert done.output == diff
            assert (await h.call("s-fs", "read_file", path="data/a.txt")).output == "alpha\ngamma\n"
            missing = await h.call("s-fs", "edit_file", path="data/a.txt", edits=edits)
            assert missing.output == (
                "tool edit_file failed: SandboxError: ValueError: edit 1: oldText 'beta' is not"
                " in 'data/a.txt': copy the exact text (read_file) and try again"
            )
            tree = await h.call("s-fs", "directory_tree", path="data")
            assert json.loads(tree.output) == [
                {"name": "a.txt", "type": "file"},
                {
                    "name": "raw",
                    "type": "directory",
                    "children": [{"name": "b.txt", "type": "file"}],
                },
            ]
            allowed = await h.call("s-fs", "list_allowed_directories")
            assert allowed.output == "Allowed directories:\n/workspace"
            await h.call("s-fs", "run_shell_command", command="printf '\\377\\376' > blob.bin")
            binary = await h.call("s-fs", "read_file", path="blob.bin")
            assert binary.output == (
                "tool read_file failed: SandboxError: ValueError: file 'blob.bin' is not UTF-8"
                " text (2 bytes, binary?): inspect it with get_file_info or run_shell_command"
                " (file, xxd)"
            )
            await h.call("s-fs", "run_shell_command", command="ln -s /etc out")
            escape = await h.call("s-fs", "directory_tree", path="out")
            assert escape.output == (
                "tool directory_tree failed: SandboxError: PermissionError: path 'out' leaves"
                " the workspace: give a path inside /workspace"
            )
            edit_out = await h.call("s-fs", "edit_file", path="/etc/hostname", edits=edits)
            assert edit_out.output == (
                "tool edit_file failed: SandboxError: PermissionError: path '/etc/hostname'"
                " leaves the workspace: give a path inside /workspace"
            )
    finally:
        await close_all(boxes)
