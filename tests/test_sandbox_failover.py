"""A session's workspace survives a SIGKILL of its tool worker and a move to another root;
`client.end_session` closes its sandbox where it now runs and deletes workspace and snapshot."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ToolCall, ToolResult, encode, new_id
from agentqueue.workers.sandbox_snapshot import RESTORED
from tests.processes import WorkerProcess
from tests.workers.test_sandbox import bwrap

pytestmark = [pytest.mark.broker, pytest.mark.slow]
__all__ = ["bwrap"]  # the fixture that fails (under CI) when bubblewrap is missing


async def call(client: Client, topology: Topology, session: str, name: str, **args: object) -> str:
    call_id = new_id()
    envelope = Envelope(
        id=call_id,
        session_id=session,
        correlation_id=call_id,
        reply_to=client.reply_queue,
        body=ToolCall(name=name, arguments=args, call_id=call_id),
        created_at=time.time(),
    )
    inbox = client.router.expect(call_id)
    await client.broker.publish(topology.route(envelope), encode(envelope))
    with anyio.fail_after(60):
        reply = await inbox.get()
    assert isinstance(reply.body, ToolResult)
    return reply.body.output


async def test_after_a_sigkill_the_new_owner_with_another_root_has_the_sessions_files(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"sf{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=1, tool_partitions=1)
    args = (
        *("--app", "tests.apps.sandbox_app:app", "--broker", rabbitmq_url, "--role", "tools"),
        *("--store", f"sqlite:///{tmp_path}/sessions.db", "--namespace", ns, "--no-balance"),
        *("--partition-count", "1", "--tool-partition-count", "1"),
    )
    first = WorkerProcess(*args, env={"AGENTQUEUE_SANDBOX_ROOT": str(tmp_path / "machine-a")})
    second: WorkerProcess | None = None
    try:
        first.wait_serving()
        # Started once the first serves, so it stands by: the first holds the one tool partition.
        second = WorkerProcess(*args, env={"AGENTQUEUE_SANDBOX_ROOT": str(tmp_path / "machine-b")})
        second.wait_serving()
        async with Client(rabbitmq_url, topology=topology) as client:
            wrote = await call(
                client, topology, "s-move", "write_file", path="t.csv", content="a\n1\n"
            )
            assert wrote == "wrote 4 characters to t.csv"
            cell = await call(client, topology, "s-move", "run_ipython_cell", code="n = 7\nn")
            assert cell == "7\n"
            assert (tmp_path / "machine-a" / "s-move" / "t.csv").exists()
            first.kill()
            read = await call(client, topology, "s-move", "read_file", path="t.csv")
            assert read == RESTORED + "a\n1\n"
            assert (tmp_path / "machine-b" / "s-move" / "t.csv").read_text() == "a\n1\n"
            gone = await call(client, topology, "s-move", "run_ipython_cell", code="'n' in dir()")
            assert gone == "False\n"
            ended = await client.end_session("s-move")
            assert ended.startswith("ended session 's-move' on ")
            assert ended.endswith(": closed sandbox; its workspace and its snapshot are deleted")
            assert not (tmp_path / "machine-b" / "s-move").exists()
            fresh = await call(client, topology, "s-move", "list_directory", path=".")
            assert fresh == ""  # a new sandbox, nothing restored
    finally:
        first.kill()
        if second is not None:
            second.kill()
