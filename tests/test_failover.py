"""Real worker processes on RabbitMQ: fail-over on SIGKILL, memory that follows the session."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ToolCall, ToolResult, encode, new_id
from tests.processes import WorkerProcess, workers
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]


async def settled(client: Client, topology: Topology, *procs: WorkerProcess) -> None:
    """Until every worker has seen all the others and each tool partition has one consumer."""

    def all_seen(proc: WorkerProcess) -> bool:
        changes = [line for line in proc.lines if "live workers changed: " in line]
        return bool(changes) and changes[-1].count(", ") == len(procs) - 1

    async def one_consumer_each() -> bool:
        stats = [await client.broker.stats(q) for q in topology.queues("tools")]
        return all(s.consumers == 1 for s in stats)

    await wait_for(lambda: all(all_seen(p) for p in procs), 60, "the workers to see each other")
    await wait_for(one_consumer_each, 60, "one consumer on each tool partition")


def worker_args(url: str, ns: str, store: str, *extra: str) -> tuple[str, ...]:
    return (
        "--app",
        "tests.apps.steps:app",
        "--broker",
        url,
        "--store",
        store,
        "--namespace",
        ns,
        "--partition-count",
        "8",
        "--tool-partition-count",
        "8",
        *extra,
    )


async def test_when_the_active_worker_is_killed_the_other_takes_over_and_every_request_is_answered_once(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"fo{new_id()[:6]}"
    log = tmp_path / "steps.log"
    store = f"sqlite:///{tmp_path}/sessions.db"
    topology = Topology(namespace=ns, partitions=8, tool_partitions=8)
    with workers(
        worker_args(rabbitmq_url, ns, store),
        worker_args(rabbitmq_url, ns, store),
        env={"AGENTQUEUE_TEST_LOG": str(log)},
    ) as (first, second):
        async with Client(rabbitmq_url, topology=topology) as client:
            await settled(client, topology, first, second)
            router: ReplyRouter = client.router
            inboxes = {}
            sessions = [f"s{i}" for i in range(40)]
            for seq in range(10):
                for session in sessions:
                    call_id = new_id()
                    envelope = Envelope(
                        id=call_id,
                        session_id=session,
                        correlation_id=call_id,
                        reply_to=client.reply_queue,
                        body=ToolCall(
                            name="step",
                            arguments={"session": session, "seq": seq, "pause": 0.1},
                            call_id=call_id,
                        ),
                        created_at=time.time(),
                    )
                    inboxes[call_id] = router.expect(call_id)
                    await client.broker.publish(topology.route(envelope), encode(envelope))
            # Killed mid-run: once it has run a step, with most of the 400 still to go.
            ran = f" {first.pid}\n"
            await wait_for(lambda: log.exists() and ran in log.read_text(), 60, "a step on first")
            first.kill()
            replies = {}
            with anyio.fail_after(90):
                for call_id, inbox in inboxes.items():
                    replies[call_id] = await inbox.get()
            dead = await client.broker.stats(topology.dead_letter_queue)
    assert len(replies) == 400
    assert all(isinstance(r.body, ToolResult) and r.body.ok for r in replies.values())
    assert all(inbox.empty() for inbox in inboxes.values())  # exactly one answer each
    runs: dict[str, list[int]] = defaultdict(list)
    pids: set[str] = set()
    for line in log.read_text().splitlines():
        session, seq, pid = line.split()
        runs[session].append(int(seq))
        pids.add(pid)
    for session in sessions:
        # A step the killed worker ran but never committed runs again right after: same event.
        collapsed = [s for i, s in enumerate(runs[session]) if i == 0 or s != runs[session][i - 1]]
        assert collapsed == list(range(10)), session
    assert pids == {str(first.pid), str(second.pid)}
    assert dead.ready == 0


@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
async def test_turn_two_on_another_worker_process_recalls_turn_one(
    store_kind: str, rabbitmq_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns = f"mt{new_id()[:6]}"
    store = (
        request.getfixturevalue("redis_url")
        if store_kind == "redis"
        else f"sqlite:///{tmp_path}/s.db"
    )
    topology = Topology(namespace=ns, partitions=8, tool_partitions=8)
    session = f"chat-{new_id()[:6]}"
    async with Client(rabbitmq_url, topology=topology) as client:
        with workers(worker_args(rabbitmq_url, ns, store)) as (a,):
            first = await client.call("My name is Ada.", session_id=session, timeout=60)
            a.terminate()
        with workers(worker_args(rabbitmq_url, ns, store)):
            second = await client.call("What is my name?", session_id=session, timeout=60)
    assert first.worker != second.worker
    assert second.text == "Your name is Ada."


async def test_a_tool_call_runs_on_a_separate_tool_worker_process(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"tw{new_id()[:6]}"
    store = f"sqlite:///{tmp_path}/s.db"
    topology = Topology(namespace=ns, partitions=8, tool_partitions=8)
    with workers(
        worker_args(rabbitmq_url, ns, store, "--role", "agents"),
        worker_args(rabbitmq_url, ns, store, "--role", "tools"),
    ) as (agents, tools):
        async with Client(rabbitmq_url, topology=topology) as client:
            result = await client.call("/tool whoami {}", session_id="s1", timeout=60)
    assert result.text == f"Tool whoami returned: {tools.pid}."
    assert tools.pid != agents.pid
