"""Session sandboxes: one bwrap-isolated process per session on the tool worker that owns it.

We run `bwrap` ourselves rather than through `agentscope.workspace.BubblewrapBackend`: the
backend starts a fresh bwrap per command (no process kept per session, so no warm pool and no
Python variables across calls) and binds the host's system directories, `/etc` included, which
a process mapped to host root could read (`/etc/shadow`). We keep its flags (`--unshare-all`,
`--clearenv`, `--die-with-parent`, `--new-session`, network closed unless asked) and its realpath
check, and mount only `/usr`, the interpreter and the session's workspace.

A sandbox is a long-lived `sandbox_server` process (standard library only, `python -I -S`) that
answers one JSON request per line; a base sandbox runs an IPython kernel beside it. The workspace
lives under the worker's root; it follows a session to another worker by a shared root or by
store snapshots (`sandbox_snapshot.py`); Python variables do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentqueue.workers.errors import SandboxError
from agentqueue.workers.sandbox_cgroups import memory_cgroup, pids_cgroup, release_cgroup

SERVER = Path(__file__).with_name("sandbox_server.py")
KERNEL = Path(__file__).with_name("sandbox_kernel.py")
FILES = Path(__file__).with_name("sandbox_files.py")
DEFAULT_LIMITS = {
    "RLIMIT_AS": 1 << 30,  # 1 GiB of address space
    "RLIMIT_FSIZE": 64 << 20,  # 64 MiB per file written
    "RLIMIT_NOFILE": 256,
    "RLIMIT_NPROC": 256,  # not applied to host root; see the report on cgroups
}


def workspace_name(session_id: str) -> str:
    """A directory name for a session: its id when safe, else a hash of it."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", session_id):
        return session_id
    return "h-" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


@dataclass
class SandboxConfig:
    """How a worker's sandboxes are built: shared root, pool size, idle TTL, limits, network."""

    root: Path
    pool_size: int = 2
    idle_ttl: float = 600.0
    call_timeout: float = 30.0
    share_net: bool = False
    pids_max: int = 128  # enforced by the pids cgroup: RLIMIT_NPROC does not bind host root
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    memory_max: int = 1 << 30  # bytes, by a memory cgroup (all of a sandbox's processes)
    network: tuple[str, ...] = ()  # hosts a browser may reach through the proxy; () is none
    screen: tuple[int, int] = (1024, 768)  # a gui sandbox's display, a browser's viewport
    inline_image_limit: int = 32 * 1024  # bytes; larger screenshots go to the artifact store
    artifacts: str | None = None  # the store URL for large screenshots (None: the worker's)
    display: bool = False  # a gui sandbox: Xvfb, a window manager and xdotool beside the server
    kernel: bool = False  # a base sandbox: an IPython kernel runs `run_ipython_cell`
    # Bytes of files up to which a workspace is snapshot into the store after each call that
    # changed it, so it follows the session to a worker with another root; 0 is off.
    snapshot_max: int = 16 << 20


class Sandbox:
    """One bwrap process bound to one workspace directory; requests run one at a time."""

    def __init__(
        self, workspace: Path, process: asyncio.subprocess.Process, cgroups: list[Path]
    ) -> None:
        self.workspace = workspace
        self.process = process
        self.cgroups = cgroups
        self.started_at = time.time()
        self.last_used = time.monotonic()
        self.from_pool = False
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, workspace: Path, config: SandboxConfig) -> Sandbox:
        """Start bwrap over `workspace` and wait for the server inside to say it is ready."""
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
        cgroups = [await asyncio.to_thread(pids_cgroup, config.pids_max)]
        memory = await asyncio.to_thread(memory_cgroup, config.memory_max, cgroups[0])
        if memory is not None:
            cgroups.append(memory)
        # sh joins the cgroups before exec'ing bwrap, so every process of the sandbox is in them.
        process: asyncio.subprocess.Process | None = None
        try:
            join = 'echo $$ > "$1" && shift && ' * len(cgroups) + 'exec "$@"'
            process = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                join,
                "sh",
                *(str(group / "cgroup.procs") for group in cgroups),
                *bwrap_command(workspace, config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={},  # the worker's environment never reaches bwrap, let alone the sandbox
                start_new_session=True,
            )
            assert process.stdout is not None
            line = await process.stdout.readline()
            if not line:
                err = (
                    (await process.stderr.read()).decode(errors="replace") if process.stderr else ""
                )
                raise SandboxError(f"sandbox failed to start: {err.strip() or 'no output'}")
            return cls(workspace, process, cgroups)
        except BaseException:
            # Cancelled or failed half-way: leave neither a process nor an empty cgroup behind.
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
            for group in cgroups:
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.shield(release_cgroup(group))
            raise

    async def request(self, op: str, args: dict[str, object], timeout: float) -> tuple[bool, str]:
        """Run one operation; past `timeout` the whole sandbox is killed and SandboxError raised."""
        async with self.lock:
            self.last_used = time.monotonic()
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
            try:
                async with asyncio.timeout(timeout):
                    await self.process.stdin.drain()
                    line = await self.process.stdout.readline()
            except asyncio.CancelledError:
                self.kill()  # a reply may still come: this sandbox can never be trusted again
                raise
            except TimeoutError:
                await self.close()
                raise SandboxError(
                    f"{op} was stopped after the sandbox's wall-clock limit of {timeout} s;"
                    " the sandbox was restarted (files kept, Python variables lost)"
                ) from None
            self.last_used = time.monotonic()
            if not line:
                await self.close()
                raise SandboxError(
                    f"{op} ended the sandbox (exit code {self.process.returncode});"
                    " the sandbox was restarted (files kept, Python variables lost)"
                )
            reply = json.loads(line)
            if reply.get("broken"):
                await self.close()  # the next call of the session starts a fresh sandbox
                raise SandboxError(str(reply["output"]))
            return bool(reply["ok"]), str(reply["output"])

    @property
    def alive(self) -> bool:
        """Whether the bwrap process is still running."""
        return self.process.returncode is None

    def kill(self) -> None:
        """Kill the sandbox's whole process group (bwrap, the server, whatever it started)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)

    async def close(self) -> None:
        """Kill the sandbox's whole process group and reap it."""
        self.kill()
        await self.process.wait()
        for group in self.cgroups:
            await release_cgroup(group)


def base_interpreter() -> str:
    """The base interpreter's real path, not the venv's: the sandbox has no venv."""
    # A CPython attribute that typeshed does not declare.
    return os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]


def bwrap_command(workspace: Path, config: SandboxConfig) -> list[str]:
    """The bwrap argv: every namespace unshared, host read-only, workspace the one writable bind."""
    python = base_interpreter()
    binds = [("--ro-bind", str(SERVER), "/sandbox/server.py")]
    binds += [("--ro-bind", str(FILES), "/sandbox/files.py")]
    if config.kernel:
        # ipykernel and jupyter-client come from the worker's own site-packages, read-only.
        site = sysconfig.get_paths()["purelib"]
        binds += [("--ro-bind", str(KERNEL), "/sandbox/kernel.py")]
        binds += [("--ro-bind", site, "/sandbox/site-packages")]
    options = json.dumps({"kernel": config.kernel})
    server = [python, "-I", "-S", "/sandbox/server.py", json.dumps(config.limits), options]
    if not config.display:
        return bwrap_prefix(workspace, config, binds) + server
    if os.path.isdir("/etc/fonts"):  # fontconfig's configuration, for Tk and friends
        binds.append(("--ro-bind", "/etc/fonts", "/etc/fonts"))
    argv = bwrap_prefix(workspace, config, binds)
    argv += ["--setenv", "DISPLAY", ":0", "--setenv", "XDG_CACHE_HOME", "/tmp/cache"]
    return [*argv, "/bin/sh", "-c", DESKTOP.format(*config.screen), "desktop", *server]


# A gui sandbox: Xvfb on :0 (its framebuffer mapped to /tmp/Xvfb_screen0 for screenshots), a
# window manager, then the server. Their chatter goes to /tmp: nobody reads the stderr pipe.
DESKTOP = (
    "Xvfb :0 -screen 0 {0}x{1}x24 -nolisten tcp -fbdir /tmp >/tmp/xvfb.log 2>&1 &"
    " i=0; while [ ! -e /tmp/.X11-unix/X0 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done;"
    " [ -e /tmp/.X11-unix/X0 ] || {{ cat /tmp/xvfb.log >&2; exit 1; }};"
    " matchbox-window-manager -use_titlebar no >/tmp/wm.log 2>&1 &"
    ' exec "$@"'
)


def bwrap_prefix(
    workspace: Path, config: SandboxConfig, binds: list[tuple[str, str, str]]
) -> list[str]:
    """bwrap and its flags up to the program: the mounts every sandbox has, plus `binds`."""
    prefix = os.path.realpath(sys.base_prefix)
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all"]
    if config.share_net:
        argv.append("--share-net")
    argv += ["--uid", "65534", "--gid", "65534", "--clearenv"]
    argv += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/workspace"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not prefix.startswith("/usr/"):
        argv += ["--ro-bind", prefix, prefix]
    for bind in binds:
        argv += list(bind)
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += ["--bind", str(workspace), "/workspace", "--chdir", "/workspace", "--remount-ro", "/"]
    return argv


class SandboxManager:
    """A worker's sandboxes: one per session, a warm pool for new sessions, idle reclaim."""

    def __init__(
        self, config: SandboxConfig, start: Callable[[Path], Awaitable[Any]] | None = None
    ) -> None:
        self.config = config
        # What a sandbox is: a `Sandbox` by default; browsers bring their own with the same face.
        self._start = start or functools.partial(Sandbox.start, config=config)
        self.sessions: dict[str, Sandbox] = {}
        self.pool: list[Sandbox] = []
        self._refill: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._starting: dict[str, asyncio.Lock] = {}

    @property
    def pool_dir(self) -> Path:
        """Where pre-started sandboxes keep their (empty) workspaces until a session claims one."""
        return self.config.root / ".pool"

    async def warm(self) -> None:
        """Fill the pool to its size and start the idle reaper (idempotent)."""
        while len(self.pool) < self.config.pool_size:
            workspace = self.pool_dir / uuid.uuid4().hex
            try:
                self.pool.append(await self._start(workspace))
            except BaseException:  # cancelled by close(), or failed: no empty workspace left
                await asyncio.shield(
                    asyncio.to_thread(shutil.rmtree, workspace, ignore_errors=True)
                )
                raise
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())

    async def sandbox(self, session_id: str) -> Sandbox:
        """The session's sandbox: kept, else a pooled one for a new session, else a cold start."""
        lock = self._starting.setdefault(session_id, asyncio.Lock())
        async with lock:
            box = self.sessions.get(session_id)
            if box is not None and box.alive:
                return box
            if box is not None:
                await box.close()  # a sandbox that died or was killed: reap it and its cgroup
            workspace = self.config.root / workspace_name(session_id)
            box = None
            if not await asyncio.to_thread(workspace.exists):
                while self.pool and box is None:
                    candidate = self.pool.pop()
                    if candidate.alive:
                        # The bind follows the directory's inode, so renaming hands it over.
                        os.rename(candidate.workspace, workspace)
                        candidate.workspace, candidate.from_pool = workspace, True
                        box = candidate
                if self._refill is None or self._refill.done():
                    self._refill = asyncio.create_task(self.warm())
            if box is None:
                box = await self._start(workspace)
            self.sessions[session_id] = box
            return box

    async def call(self, session_id: str, op: str, args: dict[str, object]) -> Any:
        """Run `op` in the session's sandbox (its text; a browser's screenshot is a Screenshot).

        The sandbox's own failure becomes SandboxError.
        """
        box = await self.sandbox(session_id)
        ok, output = await box.request(op, args, self.config.call_timeout)
        if not ok:
            raise SandboxError(output)
        return output

    async def reclaim_idle(self) -> list[str]:
        """Close sessions' sandboxes idle past the TTL; their workspaces stay on disk."""
        now, closed = time.monotonic(), []
        for session_id, box in list(self.sessions.items()):
            if not box.lock.locked() and now - box.last_used >= self.config.idle_ttl:
                del self.sessions[session_id]
                await box.close()
                closed.append(session_id)
        return closed

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.idle_ttl, 5.0))
            await self.reclaim_idle()

    async def close(self) -> None:
        """Close every sandbox (pooled ones too) and stop the background tasks."""
        for task in (self._refill, self._reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, SandboxError):
                    await task
        for box in [*self.sessions.values(), *self.pool]:
            await box.close()
        for box in self.pool:  # nobody's workspace yet: nothing in it to keep
            await asyncio.to_thread(shutil.rmtree, box.workspace, ignore_errors=True)
        self.sessions.clear()
        self.pool.clear()
