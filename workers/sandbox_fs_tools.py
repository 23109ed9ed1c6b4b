"""The `filesystem` tool set, with AgentScope Runtime's names and arguments (MCP filesystem's).

Each tool runs in the calling session's sandbox (`sandbox_files.py` inside it), confined to the
session's workspace: paths are relative to it and refused when they leave it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentqueue.workers.sandbox_tools import Sandboxes


def register_filesystem(tool: Callable[[Callable[..., Any]], Any], boxes: Sandboxes) -> None:
    """Register the filesystem tools with `tool` (the app's tool decorator)."""

    @tool
    async def read_file(path: str) -> str:
        """Read a text file from the session's workspace.

        Args:
            path: The file's path, relative to the workspace.
        """
        return await boxes.call("read_file", {"path": path})

    @tool
    async def write_file(path: str, content: str) -> str:
        """Write a text file in the session's workspace (replacing it if it exists).

        Args:
            path: The file's path, relative to the workspace.
            content: The text to write.
        """
        return await boxes.call("write_file", {"path": path, "content": content})

    @tool
    async def list_directory(path: str) -> str:
        """List a directory of the session's workspace, [DIR] and [FILE] marked.

        Args:
            path: The directory's path, relative to the workspace.
        """
        return await boxes.call("list_directory", {"path": path})

    @tool
    async def create_directory(path: str) -> str:
        """Create a directory (and its parents) in the session's workspace.

        Args:
            path: The directory's path, relative to the workspace.
        """
        return await boxes.call("create_directory", {"path": path})

    @tool
    async def move_file(source: str, destination: str) -> str:
        """Move or rename a file or directory inside the session's workspace.

        Args:
            source: The path to move.
            destination: The new path.
        """
        return await boxes.call("move_file", {"source": source, "destination": destination})

    @tool
    async def search_files(
        path: str,
        pattern: str,
        excludePatterns: list[str] | None = None,  # AgentScope Runtime's name
    ) -> str:
        """Find files and directories under `path` whose names contain `pattern`.

        Args:
            path: Where to start, relative to the workspace.
            pattern: A case-insensitive part of the name.
            excludePatterns: Names containing any of these are skipped (directories too).
        """
        args: dict[str, object] = {
            "path": path,
            "pattern": pattern,
            "excludePatterns": excludePatterns or [],
        }
        return await boxes.call("search_files", args)

    @tool
    async def get_file_info(path: str) -> str:
        """Size, modification time and type of a file or directory in the workspace.

        Args:
            path: The path, relative to the workspace.
        """
        return await boxes.call("get_file_info", {"path": path})

    @tool
    async def read_multiple_files(paths: list[str]) -> str:
        """Read several text files at once; a file that fails shows its error, not the others.

        Args:
            paths: The files' paths, relative to the workspace.
        """
        return await boxes.call("read_multiple_files", {"paths": paths})

    @tool
    async def edit_file(
        path: str,
        edits: list[dict[str, str]],
        dryRun: bool = False,  # AgentScope Runtime's name
    ) -> str:
        """Replace exact text in a file, edit by edit; answers a git-style diff of the change.

        Args:
            path: The file's path, relative to the workspace.
            edits: A list of {"oldText": text to find, "newText": its replacement}, in order.
            dryRun: Show the diff without writing the file.
        """
        return await boxes.call("edit_file", {"path": path, "edits": edits, "dryRun": dryRun})

    @tool
    async def directory_tree(path: str) -> str:
        """The tree under a directory as JSON: [{name, type, children}] (symlinks not followed).

        Args:
            path: The directory's path, relative to the workspace.
        """
        return await boxes.call("directory_tree", {"path": path})

    @tool
    async def list_allowed_directories() -> str:
        """The directories the file tools may touch: the session's workspace."""
        return await boxes.call("list_allowed_directories", {})
