"""Sandboxed tool sets with AgentScope Runtime's names: `base`, `filesystem`, `browser`, `gui`.

`app.sandbox_tools("base", "filesystem", root=...)` registers them as ordinary remote tools; each
call runs in the calling session's sandbox on the tool worker that owns the session's partition.
`run_ipython_cell` runs in the session's IPython kernel (`sandbox_kernel.py`), so variables
persist across a session's calls; workspaces follow sessions through store snapshots
(`sandbox_snapshot.py`); `client.end_session` reaches the `end_session` control tool. `gui`
gives that sandbox a desktop (`computer_use`); `browser` runs a sandboxed Chromium per session
(`browser.py`). Screenshots over the inline limit go to the artifact store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentqueue.protocol.messages import Image
from agentqueue.workers.browser import BrowserBox, BrowserRuntime
from agentqueue.workers.browser_ops import Screenshot
from agentqueue.workers.browser_tools import register_browser
from agentqueue.workers.errors import SandboxError, UnknownSandboxType
from agentqueue.workers.sandbox import SandboxConfig, SandboxManager, workspace_name
from agentqueue.workers.sandbox_fs_tools import register_filesystem
from agentqueue.workers.sandbox_proxy import NetworkPolicy
from agentqueue.workers.sandbox_sessions import end_session as end_sandboxes
from agentqueue.workers.sandbox_sessions import sweep_forever
from agentqueue.workers.sandbox_snapshot import END_SESSION_TOOL, RESTORED, WorkspaceSync
from agentqueue.workers.session_store import ARTIFACT_REF, SessionStore, open_store
from agentqueue.workers.settings import Settings
from agentqueue.workers.tool_context import current_call, current_store
from agentqueue.workers.toolkit import ToolOutput

if TYPE_CHECKING:
    from agentqueue.workers.app import App


class Sandboxes:
    """An app's sandbox configuration and one SandboxManager per worker that serves it."""

    def __init__(self, config: SandboxConfig, types: tuple[str, ...] = ()) -> None:
        self.config = config
        self.types = types
        self.managers: dict[str, SandboxManager] = {}
        self.browsers: dict[str, SandboxManager] = {}  # browser sandboxes, per worker
        self.runtimes: dict[str, BrowserRuntime] = {}
        self._artifacts: SessionStore | None = None
        self.sync = WorkspaceSync(config.snapshot_max)
        self.stores: dict[str, SessionStore] = {}  # each worker's store, seen in its calls
        self.sweepers: dict[str, asyncio.Task[None]] = {}
        self.in_flight: dict[Path, int] = {}  # workspaces with a call running now

    def browser_manager(self, worker_name: str) -> SandboxManager:
        """The browser sandboxes of the worker called `worker_name` (created on first use)."""
        if worker_name not in self.browsers:
            policy = (
                NetworkPolicy.parse(self.config.network) if self.config.network else NetworkPolicy()
            )
            runtime = BrowserRuntime(policy)
            # Their own workspaces: a browser's file:// reaches these and nothing else.
            config = dataclasses.replace(self.config, root=self.config.root / ".browser")
            start = functools.partial(
                BrowserBox.start, config=config, runtime=runtime, viewport=self.config.screen
            )
            self.browsers[worker_name] = SandboxManager(config, start=start)
            self.runtimes[worker_name] = runtime
        return self.browsers[worker_name]

    async def call_browser(self, op: str, args: dict[str, object]) -> str | ToolOutput:
        """Run a browser operation in the calling session's browser; images become ToolOutput."""
        session_id, worker_name = current_call.get()
        output = await self.browser_manager(worker_name).call(session_id, op, args)
        if isinstance(output, Screenshot):
            return await self.image_output(session_id, output)
        return str(output)

    async def computer_use(self, args: dict[str, object]) -> str | ToolOutput:
        """Run a `computer_use` action on the calling session's desktop; screenshots are images."""
        session_id, _ = current_call.get()
        output = await self.call("computer_use", args, notes=False)
        if args.get("action") != "screenshot":
            return output
        shot = json.loads(output)
        png = base64.b64decode(shot["png"])
        return await self.image_output(
            session_id, Screenshot(png, "image/png", shot["width"], shot["height"])
        )

    async def close_browser(self) -> str:
        """Close the calling session's browser (the next browser call starts a fresh one)."""
        session_id, worker_name = current_call.get()
        box = self.browser_manager(worker_name).sessions.pop(session_id, None)
        if box is None:
            return "No browser was open"
        await box.close()
        return "Closed the browser"

    async def image_output(self, session_id: str, shot: Screenshot) -> ToolOutput:
        """The image inline when small, else put in the artifact store and sent by reference."""
        text = f"Screenshot: {shot.media_type}, {shot.width}x{shot.height}, {len(shot.data)} bytes"
        image = Image(
            media_type=shot.media_type, width=shot.width, height=shot.height, size=len(shot.data)
        )
        if len(shot.data) <= self.config.inline_image_limit:
            image.data = shot.data
            return ToolOutput(text, [image])
        key = f"{workspace_name(session_id)}/{uuid.uuid4().hex}.{shot.media_type.split('/')[1]}"
        await self.artifact_store().put_artifact(key, shot.data)
        image.ref = ARTIFACT_REF + key
        return ToolOutput(f"{text}, stored as {image.ref}", [image])

    def artifact_store(self) -> SessionStore:
        """Where large images go: the `artifacts` store, else the running worker's own store."""
        if self.config.artifacts is None:
            store = current_store.get()
            if store is not None:
                return store
        if self._artifacts is None:
            self._artifacts = open_store(self.config.artifacts or Settings.load().store)
        return self._artifacts

    async def close_worker(self, worker_name: str) -> None:
        """Close every sandbox and browser of one worker (gone from the maps once closed)."""
        sweeper = self.sweepers.pop(worker_name, None)
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        runtime = self.runtimes.get(worker_name)
        if runtime is not None:
            await self.browsers[worker_name].close()
            await runtime.close()
            del self.browsers[worker_name], self.runtimes[worker_name]
        manager = self.managers.get(worker_name)
        if manager is not None:
            await manager.close()
            del self.managers[worker_name]

    def manager(self, worker_name: str) -> SandboxManager:
        """The manager of the worker called `worker_name` (created on first use)."""
        if worker_name not in self.managers:
            self.managers[worker_name] = SandboxManager(self.config)
        return self.managers[worker_name]

    async def call(self, op: str, args: dict[str, object], notes: bool = True) -> str:
        """Run `op` in the sandbox of the session whose tool call is running now.

        With snapshots on, a session new to this worker first gets its workspace back from the
        store, and a call that may have changed the workspace is followed by a snapshot; the
        agent is told of either (`notes=False` leaves the output untouched, e.g. JSON).
        """
        session_id, worker_name = current_call.get()
        workspace = self.config.root / workspace_name(session_id)
        store = self.artifact_store()
        self.stores[worker_name] = store  # for the idle sweep, which runs outside any call
        self.in_flight[workspace] = self.in_flight.get(workspace, 0) + 1  # never swept meanwhile
        try:
            if store.session_ttl:
                await self.sync.touch(store, workspace, store.session_ttl)
            return await self._call(session_id, worker_name, workspace, store, op, args, notes)
        finally:
            self.in_flight[workspace] -= 1
            if not self.in_flight[workspace]:
                del self.in_flight[workspace]

    async def _call(
        self,
        session_id: str,
        worker_name: str,
        workspace: Path,
        store: SessionStore,
        op: str,
        args: dict[str, object],
        notes: bool,
    ) -> str:
        manager = self.manager(worker_name)
        if not self.config.snapshot_max:
            return await manager.call(session_id, op, args)
        restored = session_id not in manager.sessions and await self.sync.restore(store, workspace)
        try:
            output = await manager.call(session_id, op, args)
        except SandboxError:
            if op not in READ_ONLY:
                await self.sync.save(store, workspace)  # a cell that wrote, then died
            raise
        warning = "" if op in READ_ONLY else await self.sync.save(store, workspace)
        if not notes:
            return output
        return (RESTORED if restored else "") + output + (f"\n{warning}" if warning else "")


TYPES = ("base", "filesystem", "browser", "gui")
# Operations that never change the workspace: no snapshot is considered after them.
READ_ONLY = frozenset(
    {
        "read_file",
        "read_multiple_files",
        "list_directory",
        "directory_tree",
        "search_files",
        "get_file_info",
        "list_allowed_directories",
        "computer_use",
    }
)


def register(app: App, types: tuple[str, ...], config: SandboxConfig) -> Sandboxes:
    """Register the tools of each sandbox type on `app`; an unknown type is refused."""
    if not types:
        raise UnknownSandboxType(f"no sandbox type given: choose from {', '.join(TYPES)}")
    for kind in types:
        if kind not in TYPES:
            raise UnknownSandboxType(
                f"sandbox type {kind!r} is unknown: choose from {', '.join(TYPES)}"
            )
    # A gui sandbox is a base sandbox with a desktop: its shell and Python see the display.
    boxes = Sandboxes(
        dataclasses.replace(config, display="gui" in types, kernel="base" in types), types
    )

    @app.on_start
    async def warm_pool(worker_id: str, role: str) -> None:
        if role == "agents":
            return
        # A tool worker: its first new session must not pay a cold start.
        if {"base", "filesystem", "gui"} & set(types):
            await boxes.manager(worker_id).warm()
            boxes.sweepers[worker_id] = asyncio.create_task(sweep_forever(boxes, worker_id))
        if "browser" in types:
            await boxes.browser_manager(worker_id).warm()

    @app.on_stop
    async def close_sandboxes(worker_id: str, role: str) -> None:
        await boxes.close_worker(worker_id)

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
        register_filesystem(tool, boxes)

    if "browser" in types:
        register_browser(tool, boxes)

    if END_SESSION_TOOL not in app.tools:  # once per app, for all its sandbox sets

        @app.tool(name=END_SESSION_TOOL, offered=False, timeout=config.call_timeout + 10.0)
        async def end_session() -> str:
            """Close the calling session's sandboxes; delete its workspaces and snapshots."""
            return "\n".join([await end_sandboxes(each) for each in app.sandbox_sets])

    if "gui" in types:

        @tool
        async def computer_use(
            action: str,
            coordinate: list[int] | None = None,
            text: str | None = None,
            start_coordinate: list[int] | None = None,
            scroll_direction: str | None = None,
            scroll_amount: int | None = None,
        ) -> Any:
            """Use the session's desktop (a virtual display) with the mouse and keyboard.

            Args:
                action: screenshot, mouse_move, left_click, right_click, middle_click,
                    double_click, left_click_drag, type, key, scroll or cursor_position.
                coordinate: [x, y] in screen pixels: where to move, click, drag to or scroll.
                text: The text to type, or the key (xdotool names: "Return", "ctrl+a").
                start_coordinate: [x, y] where a left_click_drag starts.
                scroll_direction: up, down, left or right.
                scroll_amount: How many wheel clicks to scroll (default 3).
            """
            arguments = {
                "action": action,
                "coordinate": coordinate,
                "text": text,
                "start_coordinate": start_coordinate,
                "scroll_direction": scroll_direction,
                "scroll_amount": scroll_amount,
            }
            return await boxes.computer_use({k: v for k, v in arguments.items() if v is not None})

    return boxes


def default_config(root: Path | str, **fields: Any) -> SandboxConfig:
    """A SandboxConfig over `root` with the given fields."""
    return SandboxConfig(root=Path(root), **fields)
