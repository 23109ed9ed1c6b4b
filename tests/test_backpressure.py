"""Back-pressure: bounded in-flight requests, and a full queue is an error, not a silent drop."""

from __future__ import annotations

import anyio
import pytest

from agentqueue import App, Client
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.errors import QueueFull
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings


async def test_a_slow_worker_makes_submit_wait_instead_of_piling_up_requests() -> None:
    app = App("slow")

    @app.tool("slow", idempotent=True)
    async def slow(i: int) -> str:
        await anyio.sleep(0.05)
        return str(i)

    url, topology = (
        f"memory://bp-{new_id()[:8]}",
        Topology(namespace="bp", partitions=2, tool_partitions=2),
    )
    peak = 0
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        await tg.start(
            Worker(
                app,
                broker,
                MemorySessionStore(f"memory://{new_id()[:8]}"),
                worker_settings(topology, concurrency=2),
            ).run
        )
        async with Client(broker, topology=topology, max_in_flight=8) as client:
            results: list[str] = []

            async def one(i: int) -> None:
                results.append(
                    await client.call_tool("slow", {"i": i}, session_id=f"s{i % 4}", timeout=60)
                )

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, client.router.waiting)
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as load:
                load.start_soon(watch)
                async with anyio.create_task_group() as calls:
                    for i in range(60):
                        calls.start_soon(one, i)
                load.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    assert sorted(results, key=int) == [str(i) for i in range(60)]
    assert 0 < peak <= 8


@pytest.mark.broker
async def test_a_full_queue_is_refused_with_a_clear_error_on_rabbitmq(rabbitmq_url: str) -> None:
    topology = Topology(
        namespace=f"full{new_id()[:6]}", partitions=1, tool_partitions=1, max_length=3
    )
    async with Client(rabbitmq_url, topology=topology) as client:  # no worker: the queue only fills
        accepted = 0
        with pytest.raises(QueueFull) as info:
            for _ in range(20):
                await client.submit("hello", session_id="s1", timeout=30)
                accepted += 1
    # Quorum queues switch to refusing once the limit is reached, applying it a message late.
    assert 3 <= accepted <= 4
    assert str(info.value) == (
        f"queue '{topology.namespace}-requests-0' is full: RabbitMQ refused the message"
        " (x-max-length reached); retry later or add workers"
    )
