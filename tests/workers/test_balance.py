"""Workers share partitions about N/W each and hand them over without breaking session order."""

from __future__ import annotations

from collections import defaultdict

import anyio
import pytest

from agentqueue import App, Client
from agentqueue.broker.base import Broker
from agentqueue.broker.topology import TOOLS, Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import new_id
from agentqueue.workers.membership import assign
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings


def test_assignment_is_balanced_and_moves_few_queues_when_a_worker_joins() -> None:
    queues = {f"q{i}" for i in range(12)}
    three = assign(queues, {w: set(queues) for w in ("a", "b", "c")})
    four = assign(queues, {w: set(queues) for w in ("a", "b", "c", "d")})
    assert sorted(list(three.values()).count(w) for w in "abc") == [4, 4, 4]
    assert sorted(list(four.values()).count(w) for w in "abcd") == [3, 3, 3, 3]
    moved = sum(three[q] != four[q] for q in queues)
    assert moved <= 6  # d takes 3; at most as many again move to keep the caps


async def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


def counts(workers: list[Worker]) -> list[int]:
    return sorted(len(w.owned) for w in workers)


async def one_consumer_each(broker: Broker, queues: list[str], timeout: float = 10) -> None:
    """Wait until every queue has exactly one consumer at the broker: a queue a worker took
    twice, or a released one whose consumer stayed open, shows as two."""
    with anyio.fail_after(timeout):
        while True:
            found = {q: (await broker.stats(q)).consumers for q in queues}
            if all(n == 1 for n in found.values()):
                return
            await anyio.sleep(0.1)


async def run_balance_scenario(broker_url: str, store_url: str, topology: Topology) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlap: list[str] = []
    app = App("balance")

    @app.tool("step")
    async def step(session: str, seq: int) -> str:
        if session in running:
            overlap.append(session)
        running.add(session)
        await anyio.sleep(0.002)
        seen[session].append(seq)
        running.discard(session)
        return "ok"

    brokers: list[Broker] = []
    workers: list[Worker] = []

    async def start_worker(tg: anyio.abc.TaskGroup) -> Worker:
        broker = open_broker(broker_url)
        await broker.connect()
        brokers.append(broker)
        worker = Worker(
            app,
            broker,
            MemorySessionStore(store_url),
            worker_settings(topology, balance=True, heartbeat_interval=0.2, shutdown_grace=10),
            role="tools",
        )
        workers.append(worker)
        await tg.start(worker.run)
        return worker

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            await start_worker(tg)
        await wait_for(lambda: counts(workers) == [4, 4, 4])
        await one_consumer_each(brokers[0], topology.queues(TOOLS))
        async with Client(broker_url, topology=topology) as client:
            sessions = [f"s{i}" for i in range(40)]

            async def traffic(seqs: range) -> None:
                async with anyio.create_task_group() as calls:
                    for session in sessions:

                        async def run(session: str = session) -> None:
                            for seq in seqs:
                                await client.call_tool(
                                    "step",
                                    {"session": session, "seq": seq},
                                    session_id=session,
                                    timeout=60,
                                )

                        calls.start_soon(run)

            async with anyio.create_task_group() as load:
                load.start_soon(traffic, range(0, 30))
                fourth = await start_worker(tg)
                await wait_for(lambda: counts(workers) == [3, 3, 3, 3])
                leaver = workers[0]
                leaver.stop()
                await wait_for(lambda: counts([w for w in workers if w is not leaver]) == [4, 4, 4])
                assert fourth.owned
            await one_consumer_each(brokers[0], topology.queues(TOOLS))
        for worker in workers:
            worker.stop()
    for broker in brokers:
        await broker.close()
    assert overlap == []
    assert all(seen[s] == list(range(30)) for s in sessions)


async def test_workers_share_partitions_and_hand_over_in_order_on_the_memory_broker() -> None:
    url = f"memory://balance-{new_id()[:8]}"
    topology = Topology(namespace="bal", partitions=12, tool_partitions=12)
    await run_balance_scenario(url, f"memory://s-{new_id()[:8]}", topology)


@pytest.mark.broker
async def test_workers_share_partitions_and_hand_over_in_order_on_rabbitmq(
    rabbitmq_url: str,
) -> None:
    topology = Topology(namespace=f"bal{new_id()[:6]}", partitions=12, tool_partitions=12)
    await run_balance_scenario(rabbitmq_url, f"memory://s-{new_id()[:8]}", topology)
