"""A process started with another partition count than its namespace's queues is refused."""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import PartitionMismatch
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.partition_check import existing_partitions
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


async def test_a_client_with_more_partitions_than_the_workers_is_refused_naming_both(
    broker: Broker, topology: Topology
) -> None:
    wider = dataclasses.replace(topology, partitions=32)
    with pytest.raises(PartitionMismatch) as refused:
        await broker.declare(wider)
    ns = topology.namespace
    assert str(refused.value) == (
        f"namespace {ns!r} has 4 requests partitions on this broker (queues {ns}-requests-0 …"
        f" {ns}-requests-3 exist), but this process was given 32: its requests would go to"
        " partitions no worker serves. Start it with --partition-count (AGENTQUEUE_PARTITIONS)"
        " = 4, or drain and delete the namespace's queues to change the count"
    )
    # Refused before declaring: no queue past the namespace's count was created.
    assert await existing_partitions(broker, topology, REQUESTS) == 4


async def test_fewer_tool_partitions_than_declared_is_refused(
    broker: Broker, topology: Topology
) -> None:
    with pytest.raises(PartitionMismatch, match=r"has 2 tools partitions .* was given 1"):
        await broker.declare(dataclasses.replace(topology, tool_partitions=1))


async def test_the_same_counts_declare_again_and_a_new_namespace_is_free(
    broker: Broker, topology: Topology
) -> None:
    await broker.declare(topology)  # idempotent
    fresh = dataclasses.replace(topology, namespace=f"{topology.namespace}x", partitions=7)
    assert await existing_partitions(broker, fresh, REQUESTS) is None
    await broker.declare(fresh)
    assert await existing_partitions(broker, fresh, REQUESTS) == 7
    assert await existing_partitions(broker, fresh, TOOLS) == 2


@pytest.mark.parametrize("declared", [1, 3, 5, 16, 17, 100])
async def test_the_count_is_found_whatever_this_process_was_given(declared: int) -> None:
    async with MemoryBroker(f"memory://count-{declared}") as broker:
        await broker.declare(Topology(namespace="n", partitions=declared))
        for given in (1, 2, 8, 64, 1024):
            probe = Topology(namespace="n", partitions=given)
            assert await existing_partitions(broker, probe, REQUESTS) == declared


async def test_processes_that_declare_one_namespace_at_once_all_start(broker_url: str) -> None:
    """Two workers starting together: the second may check while the first is declaring."""
    topology = Topology(namespace=f"race{new_id()[:6]}", partitions=8, tool_partitions=4)
    async with open_broker(broker_url) as a, open_broker(broker_url) as b:
        async with anyio.create_task_group() as tg:
            for broker in (a, b, a, b):
                tg.start_soon(broker.declare, topology)
        assert await existing_partitions(a, topology, REQUESTS) == 8


async def test_queues_from_an_older_delivery_limit_are_used_with_a_loud_warning(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import aio_pika

    topology = Topology(namespace=f"old{new_id()[:6]}", partitions=2, tool_partitions=1)
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for family in (REQUESTS, TOOLS):
            for name in topology.queues(family):  # as an older version declared them
                args = {"x-queue-type": "quorum", "x-single-active-consumer": True}
                args |= {
                    "x-delivery-limit": 20,
                    "x-dead-letter-exchange": f"{topology.namespace}-dlx",
                }
                await channel.declare_queue(name, durable=True, arguments=args)
    async with open_broker(rabbitmq_url) as broker:
        await broker.declare(topology)
        await broker.publish(topology.queue(REQUESTS, 1), b"still routed")
        assert (await broker.stats(topology.queue(REQUESTS, 1))).ready == 1
    [warning] = [r.getMessage() for r in caplog.records if "x-delivery-limit" in r.getMessage()]
    assert warning.startswith(
        f"3 partition queues of namespace {topology.namespace!r} ({topology.namespace}-requests-1,"
        " …) were declared with an older, lower x-delivery-limit"
    )
