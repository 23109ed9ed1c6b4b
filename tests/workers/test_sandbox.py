"""Session sandboxes under real bubblewrap, driven by ToolCall events through a real worker."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from agentqueue import App
from agentqueue.broker.base import Broker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import Envelope, ToolCall, ToolResult, encode, new_id
from agentqueue.workers.errors import UnknownSandboxType
from agentqueue.workers.sandbox import DEFAULT_LIMITS
from agentqueue.workers.sandbox_tools import Sandboxes
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.conftest import server_unavailable

REPO = Path(__file__).resolve().parents[2]  # the checkout: a sandbox must not write here


@pytest.fixture(autouse=True)
def bwrap() -> None:
    """Sandbox tests need Debian's bubblewrap (scripts/setup.sh installs it); CI fails without."""
    if shutil.which("bwrap") is None:
        server_unavailable("bwrap is not installed: run scripts/setup.sh (Debian's bubblewrap)")


class Harness:
    def __init__(self, broker: Broker, topology: Topology, router: ReplyRouter) -> None:
        self.broker, self.topology, self.router = broker, topology, router

    async def call(self, session_id: str, name: str, **arguments: object) -> ToolResult:
        """Send one ToolCall for `session_id` and await its result."""
        call_id = new_id()
        envelope = Envelope(
            id=call_id,
            session_id=session_id,
            correlation_id=call_id,
            reply_to=self.router.queue,
            body=ToolCall(name=name, arguments=dict(arguments), call_id=call_id),
            created_at=time.time(),
        )
        inbox = self.router.expect(call_id)
        await self.broker.publish(self.topology.route(envelope), encode(envelope))
        with anyio.fail_after(30):
            reply = await inbox.get()
        assert isinstance(reply.body, ToolResult)
        return reply.body


@asynccontextmanager
async def harness(
    app: App, *worker_ids: str, broker_url: str | None = None, session_ttl: float | None = None
) -> AsyncIterator[tuple[Harness, list[Worker]]]:
    """A broker (memory unless given) and one tool worker per id (the first owns the partition)."""
    topology = Topology(namespace=f"sbx{new_id()[:6]}", partitions=1, tool_partitions=1)
    url = broker_url or f"memory://sbx-{new_id()[:8]}"
    async with (
        open_broker(url) as broker,
        anyio.create_task_group() as tg,
    ):
        workers = [
            Worker(
                app,
                broker,
                MemorySessionStore(f"memory://{new_id()[:8]}", session_ttl=session_ttl),
                worker_settings(topology),
                worker_id=worker_id,
            )
            for worker_id in worker_ids
        ]
        await tg.start(workers[0].run)
        queue = topology.reply_queue("sbx")
        await broker.declare_reply_queue(queue)
        router = ReplyRouter(broker, queue)
        await tg.start(router.run)
        try:
            yield Harness(broker, topology, router), workers
        finally:
            for worker in workers:
                worker.stop()
            tg.cancel_scope.cancel()


def sandboxed_app(root: Path, **config: object) -> tuple[App, Sandboxes]:
    app = App("sbx")
    boxes = app.sandbox_tools("base", "filesystem", root=str(root), **config)
    return app, boxes


async def close_all(boxes: Sandboxes) -> None:
    for manager in boxes.managers.values():
        await manager.close()


async def test_a_file_written_in_one_call_is_read_in_the_next_and_other_sessions_never_see_it(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1") as (h, _):
            wrote = await h.call("s-alice", "write_file", path="notes.txt", content="alice only")
            assert (wrote.ok, wrote.output) == (True, "wrote 10 characters to notes.txt")
            read = await h.call("s-alice", "read_file", path="notes.txt")
            assert (read.ok, read.output) == (True, "alice only")
            kept = await h.call("s-alice", "run_ipython_cell", code="x = 41")
            again = await h.call("s-alice", "run_ipython_cell", code="print(x + 1)")
            assert (kept.ok, again.output) == (True, "42\n")
            other = await h.call("s-bob", "read_file", path="notes.txt")
            assert (other.ok, other.output) == (
                False,
                "tool read_file failed: SandboxError: FileNotFoundError: [Errno 2] No such file"
                " or directory: '/workspace/notes.txt'",
            )
            theirs = await h.call("s-bob", "run_ipython_cell", code="print('x' in dir())")
            assert theirs.output == "False\n"  # alice's kernel variables are hers alone
            listing = await h.call("s-bob", "run_shell_command", command="ls -a /workspace")
            assert listing.output == ".\n..\n"
            escape = await h.call("s-bob", "read_file", path="../s-alice/notes.txt")
            assert escape.output == (
                "tool read_file failed: SandboxError: PermissionError: path"
                " '../s-alice/notes.txt' leaves the workspace: give a path inside /workspace"
            )
    finally:
        await close_all(boxes)


async def test_cells_run_in_an_ipython_kernel_and_a_kernel_that_dies_is_a_tool_error_then_replaced(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1") as (h, _):
            await h.call("s-ipy", "write_file", path="kept.txt", content="on disk")
            shown = await h.call("s-ipy", "run_ipython_cell", code="n = 6 * 7\nn")
            assert (shown.ok, shown.output) == (True, "42\n")  # the value, as IPython shows it
            magic = await h.call("s-ipy", "run_ipython_cell", code="%who_ls")
            assert magic.output == "['n']\n"
            error = await h.call("s-ipy", "run_ipython_cell", code="n / 0")
            assert error.ok and error.output.endswith("ZeroDivisionError: division by zero\n")
            died = await h.call("s-ipy", "run_ipython_cell", code="import os; os._exit(3)")
            assert (died.ok, died.output) == (
                False,
                "tool run_ipython_cell failed: SandboxError: the IPython kernel died (exit code"
                " 3, e.g. killed at the sandbox's memory limit or by os._exit); the sandbox was"
                " replaced: files kept, Python variables lost",
            )
            after = await h.call("s-ipy", "run_ipython_cell", code="print(open('kept.txt').read())")
            assert (after.ok, after.output) == (True, "on disk\n")
            assert not await anyio.Path(tmp_path / "s-ipy" / ".ipython").exists()
    finally:
        await close_all(boxes)


async def test_a_workspace_over_the_snapshot_limit_is_not_saved_and_the_agent_is_told(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0, snapshot_max=16)
    try:
        async with harness(app, "w1") as (h, workers):
            small = await h.call("s-big", "write_file", path="a.txt", content="0123456789")
            assert small.output == "wrote 10 characters to a.txt"
            big = await h.call("s-big", "write_file", path="b.txt", content="0123456789")
            assert big.output == (
                "wrote 10 characters to b.txt\n[the workspace holds 20 bytes, over the 16-byte"
                " snapshot limit: this change was NOT saved to the store and will not follow the"
                " session to another worker (the last snapshot that fit will); keep large files"
                " out of the workspace, or give the workers a shared workspace root (a shared"
                " volume) and snapshot_max=0]"
            )
            snapshot = await workers[0].store.get_artifact("sandbox-workspace/s-big")
            assert snapshot is not None
            with tarfile.open(fileobj=io.BytesIO(snapshot)) as tar:
                assert tar.getnames() == ["a.txt"]  # the last snapshot that fit
    finally:
        await close_all(boxes)


async def test_a_session_idle_past_the_stores_session_ttl_loses_its_sandbox_workspace_and_snapshot(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1", session_ttl=0.4) as (h, workers):
            await h.call("s-ttl", "write_file", path="a.txt", content="soon gone")
            store = workers[0].store
            assert await store.get_artifact("sandbox-workspace/s-ttl")
            manager = boxes.manager("w1")
            with anyio.fail_after(20):
                while "s-ttl" in manager.sessions or (tmp_path / "s-ttl").exists():
                    await anyio.sleep(0.05)
            assert await store.get_artifact("sandbox-workspace/s-ttl") == b""
            again = await h.call("s-ttl", "list_directory", path=".")
            assert (again.ok, again.output) == (True, "")  # a fresh sandbox, nothing restored
    finally:
        await close_all(boxes)


async def test_a_symlink_planted_in_the_workspace_cannot_lead_a_file_tool_out(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1") as (h, _):
            await h.call("s-link", "run_shell_command", command="ln -s /usr/lib/os-release out")
            read = await h.call("s-link", "read_file", path="out")
            assert (read.ok, read.output) == (
                False,
                "tool read_file failed: SandboxError: PermissionError: path 'out' leaves the"
                " workspace: give a path inside /workspace",
            )
    finally:
        await close_all(boxes)


def test_an_unknown_sandbox_type_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownSandboxType) as refused:
        App("sbx").sandbox_tools("base", "gpu", root=str(tmp_path))
    assert str(refused.value) == (
        "sandbox type 'gpu' is unknown: choose from base, filesystem, browser, gui"
    )


async def test_the_sandbox_sees_none_of_the_workers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "hunter2")
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1") as (h, _):
            result = await h.call("s-env", "run_shell_command", command="env | sort")
            assert result.output == (
                "HOME=/workspace\nLC_CTYPE=C.UTF-8\nPATH=/usr/bin:/bin\nPWD=/workspace\n"
            )
            proc = await h.call(
                "s-env", "run_shell_command", command="grep -l SECRET /proc/*/environ"
            )
            assert "hunter2" not in proc.output and os.environ["SECRET"] == "hunter2"
    finally:
        await close_all(boxes)


async def test_the_sandbox_cannot_write_outside_its_workspace_nor_reach_the_network(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        async with harness(app, "w1") as (h, _):
            etc = await h.call("s-w", "run_shell_command", command="echo x > /etc/planted")
            assert etc.output == (
                "\n[stderr]\n/bin/sh: 1: cannot create /etc/planted: Directory nonexistent\n"
                "\n[exit code 2]"
            )
            usr = await h.call("s-w", "run_shell_command", command="touch /usr/planted")
            assert usr.output == (
                "\n[stderr]\ntouch: cannot touch '/usr/planted': Read-only file system\n"
                "\n[exit code 1]"
            )
            into_repo = await h.call("s-w", "run_shell_command", command=f"touch {REPO}/planted")
            assert into_repo.output.endswith("\n[exit code 1]")
            assert not await anyio.Path(REPO / "planted").exists()
            assert not await anyio.Path("/etc/planted").exists()
            code = (
                "import socket\n"
                f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "except OSError as exc:\n    print(type(exc).__name__)\n"
            )
            net = await h.call("s-w", "run_ipython_cell", code=code)
            assert net.output == "ConnectionRefusedError\n"  # its own loopback, not the host's
    finally:
        listener.close()
        await close_all(boxes)


@pytest.mark.broker
async def test_a_runaway_loop_is_killed_at_its_limit_while_other_sessions_serve_and_files_stay(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0, call_timeout=2.0)
    try:
        async with harness(app, "w1", broker_url=rabbitmq_url) as (h, _):
            await h.call("s-loop", "write_file", path="kept.txt", content="still here")
            await h.call("s-calm", "run_shell_command", command="true")  # its sandbox is up
            done: dict[str, object] = {}

            async def run_loop() -> None:
                done["loop"] = await h.call(
                    "s-loop", "run_ipython_cell", code="while True:\n    pass"
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_loop)
                # While the loop spins, another session's sandbox answers (in milliseconds,
                # long before the loop's two seconds are up).
                other = await h.call("s-calm", "run_shell_command", command="echo still serving")
                assert (other.ok, other.output, "loop" in done) == (True, "still serving\n", False)
            loop = done["loop"]
            assert (loop.ok, loop.output) == (  # type: ignore[attr-defined]
                False,
                "tool run_ipython_cell failed: SandboxError: run_ipython_cell was stopped after"
                " the sandbox's wall-clock limit of 2.0 s; the sandbox was restarted (files kept,"
                " Python variables lost)",
            )
            after = await h.call("s-loop", "read_file", path="kept.txt")
            assert (after.ok, after.output) == (True, "still here")
    finally:
        await close_all(boxes)


@pytest.mark.broker
async def test_a_process_flood_and_a_memory_hog_are_stopped_while_other_sessions_keep_serving(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    # The address-space rlimit is raised so that the memory cgroup is what stops the hog.
    limits = dict(DEFAULT_LIMITS, RLIMIT_AS=8 << 30)
    app, boxes = sandboxed_app(
        tmp_path, pool_size=0, pids_max=32, memory_max=256 << 20, limits=limits
    )
    try:
        async with harness(app, "w1", broker_url=rabbitmq_url) as (h, _):
            flood = await h.call(
                "s-flood",
                "run_shell_command",
                command="for i in $(seq 1 100); do sleep 3 & done 2>&1 | tail -1; echo contained",
            )
            assert (flood.ok, flood.output) == (True, "/bin/sh: 0: Cannot fork\ncontained\n")
            await h.call("s-hog", "run_ipython_cell", code="kept = 1")
            hog = await h.call(
                "s-hog", "run_ipython_cell", code="chunks = [b'x' * (32 << 20) for _ in range(32)]"
            )
            assert (hog.ok, hog.output) == (
                False,
                "tool run_ipython_cell failed: SandboxError: the IPython kernel died (exit code"
                " -9, e.g. killed at the sandbox's memory limit or by os._exit); the sandbox was"
                " replaced: files kept, Python variables lost",
            )
            other = await h.call("s-calm", "run_shell_command", command="echo still serving")
            assert (other.ok, other.output) == (True, "still serving\n")
            fresh = await h.call("s-hog", "run_ipython_cell", code="print('kept' in dir())")
            assert (fresh.ok, fresh.output) == (True, "False\n")
    finally:
        await close_all(boxes)


async def test_an_idle_sandbox_is_reclaimed_after_its_ttl(tmp_path: Path) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=1, idle_ttl=0.2)
    try:
        async with harness(app, "w1") as (h, _):
            await h.call("s-idle", "run_shell_command", command="true")
            manager = boxes.manager("w1")
            box = manager.sessions["s-idle"]
            with anyio.fail_after(10):
                while "s-idle" in manager.sessions or box.alive:
                    await anyio.sleep(0.05)
            assert box.process.returncode == -9
    finally:
        await close_all(boxes)


async def test_a_new_sessions_first_call_is_served_from_the_warm_pool_which_refills(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=1)
    try:
        async with harness(app, "w1") as (h, _):
            manager = boxes.manager("w1")
            await manager.warm()
            pooled = manager.pool[0]
            sent = time.time()
            first = await h.call("s-new", "run_shell_command", command="echo hello")
            assert (first.ok, first.output) == (True, "hello\n")
            box = manager.sessions["s-new"]
            assert box is pooled and box.from_pool and box.started_at < sent
            assert box.workspace == tmp_path / "s-new"
            with anyio.fail_after(10):
                while len(manager.pool) < 1:
                    await anyio.sleep(0.05)
            assert manager.pool[0] is not pooled
    finally:
        await close_all(boxes)


async def test_a_sessions_files_follow_it_to_a_second_worker_sharing_the_root(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=0)
    try:
        async with harness(app, "w1", "w2") as (h, workers):
            await h.call("s-move", "write_file", path="data.csv", content="a,b\n1,2\n")
            workers[0].stop()
            await boxes.manager("w1").close()
            async with anyio.create_task_group() as tg:
                await tg.start(workers[1].run)
                result = await h.call("s-move", "read_file", path="data.csv")
                assert (result.ok, result.output, result.worker) == (True, "a,b\n1,2\n", "w2")
                workers[1].stop()
    finally:
        await close_all(boxes)


@pytest.mark.broker
async def test_over_rabbitmq_the_sandbox_hides_the_env_other_sessions_and_the_brokers_port(
    tmp_path: Path, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET", "hunter2")
    port = int(rabbitmq_url.rsplit(":", 1)[1].split("/")[0])
    app, boxes = sandboxed_app(tmp_path, pool_size=1)
    try:
        async with harness(app, "w1", broker_url=rabbitmq_url) as (h, _):
            await h.call("s-one", "write_file", path="mine.txt", content="one")
            env = await h.call("s-two", "run_shell_command", command="env | grep -c SECRET")
            assert env.output == "0\n\n[exit code 1]"
            peek = await h.call("s-two", "run_shell_command", command=f"ls {tmp_path}")
            assert peek.output.endswith("No such file or directory\n\n[exit code 2]")
            code = (
                "import socket\n"
                f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "except OSError as exc:\n    print(type(exc).__name__)\n"
            )
            broker = await h.call("s-two", "run_ipython_cell", code=code)
            assert broker.output == "ConnectionRefusedError\n"
            shadow = await h.call("s-two", "run_shell_command", command="cat /etc/shadow")
            assert shadow.output == (
                "\n[stderr]\ncat: /etc/shadow: No such file or directory\n\n[exit code 1]"
            )
            environ = await h.call(
                "s-two", "run_shell_command", command=f"cat /proc/{os.getpid()}/environ"
            )
            assert "hunter2" not in environ.output and environ.output.endswith("[exit code 1]")
            await h.call("s-two", "run_shell_command", command="ln -s /etc/shadow planted")
            planted = await h.call("s-two", "read_file", path="planted")
            assert planted.output == (
                "tool read_file failed: SandboxError: PermissionError: path 'planted' leaves the"
                " workspace: give a path inside /workspace"
            )
    finally:
        await close_all(boxes)


async def test_a_tool_worker_fills_the_pool_when_it_starts_and_closes_its_sandboxes_when_it_stops(
    tmp_path: Path,
) -> None:
    app, boxes = sandboxed_app(tmp_path, pool_size=1)
    try:
        async with harness(app, "w1") as (h, workers):
            manager = boxes.managers["w1"]
            assert len(manager.pool) == 1 and manager.pool[0].alive  # before any call
            result = await h.call("s-life", "run_shell_command", command="echo up")
            assert (result.ok, result.output) == (True, "up\n")
            running = [manager.sessions["s-life"]]
            with anyio.fail_after(10):  # the pool refills behind the claimed sandbox
                while not manager.pool:
                    await anyio.sleep(0.05)
            running += manager.pool
            workers[0].stop()
            with anyio.fail_after(30):
                while "w1" in boxes.managers:
                    await anyio.sleep(0.05)
        assert not any(box.alive for box in running)
    finally:
        await close_all(boxes)
