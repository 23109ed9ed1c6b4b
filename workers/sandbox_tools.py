"""Sandboxed tool sets with AgentScope Runtime's names: `base` and `filesystem`.

`app.sandbox_tools("base", "filesystem", root=...)` registers them as ordinary remote tools; each
call runs in the calling session's sandbox on the tool worker that owns the session's partition.
`run_ipython_cell` runs in a Python process kept per session (standard `exec`, not an IPython
kernel: IPython and ipykernel are not installed), so variables persist across a session's calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agentqueue.workers.errors import UnknownSandboxType
from agentqueue.workers.sandbox import SandboxConfig, SandboxManager
from agentqueue.workers.tool_handler import current_call

if TYPE_CHECKING:
    from agentqueue.workers.app import App


class Sandboxes:
    """An app's sandbox configuration and one SandboxManager per worker that serves it."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.managers: dict[str, SandboxManager] = {}

    def manager(self, worker_name: str) -> SandboxManager:
        """The manager of the worker called `worker_name` (created on first use)."""
        if worker_name not in self.managers:
            self.managers[worker_name] = SandboxManager(self.config)
        return self.managers[worker_name]

    async def call(self, op: str, args: dict[str, object]) -> str:
        """Run `op` in the sandbox of the session whose tool call is running now."""
        session_id, worker_name = current_call.get()
        return await self.manager(worker_name).call(session_id, op, args)


TYPES = ("base", "filesystem")


def register(app: App, types: tuple[str, ...], config: SandboxConfig) -> Sandboxes:
    """Register the tools of each sandbox type on `app`; an unknown type is refused."""
    if not types:
        raise UnknownSandboxType(f"no sandbox type given: choose from {', '.join(TYPES)}")
    for kind in types:
        if kind not in TYPES:
            raise UnknownSandboxType(
                f"sandbox type {kind!r} is unknown: choose from {', '.join(TYPES)}"
            )
    boxes = Sandboxes(config)

    @app.on_start
    async def warm_pool(worker_id: str, role: str) -> None:
        if role != "agents":  # a tool worker: its first new session must not pay a cold start
            await boxes.manager(worker_id).warm()

    @app.on_stop
    async def close_sandboxes(worker_id: str, role: str) -> None:
        manager = boxes.managers.pop(worker_id, None)
        if manager is not None:
            await manager.close()

    # The tool's ceiling sits above the sandbox's wall-clock limit, so the sandbox answers first.
    tool = app.tool(timeout=config.call_timeout + 10.0)

    if "base" in types:

        @tool
        async def run_ipython_cell(code: str) -> str:
            """Run Python code in the session's sandbox; variables persist across calls.

            Args:
                code: The Python code to run.
            """
            return await boxes.call("run_ipython_cell", {"code": code})

        @tool
        async def run_shell_command(command: str) -> str:
            """Run a shell command in the session's sandbox (working directory: the workspace).

            Args:
                command: The shell command to run.
            """
            return await boxes.call("run_shell_command", {"command": command})

    if "filesystem" in types:

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
        async def search_files(path: str, pattern: str) -> str:
            """Find files and directories under `path` whose names contain `pattern`.

            Args:
                path: Where to start, relative to the workspace.
                pattern: A case-insensitive part of the name.
            """
            return await boxes.call("search_files", {"path": path, "pattern": pattern})

        @tool
        async def get_file_info(path: str) -> str:
            """Size, modification time and type of a file or directory in the workspace.

            Args:
                path: The path, relative to the workspace.
            """
            return await boxes.call("get_file_info", {"path": path})

    return boxes


def default_config(root: Path | str, **fields: object) -> SandboxConfig:
    """A SandboxConfig over `root` with the given fields."""
    return SandboxConfig(root=Path(root), **fields)  # type: ignore[arg-type]
