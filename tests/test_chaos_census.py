"""The chaos run's census of what partition queues still hold once its workers stopped."""

from __future__ import annotations

import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import AgentRequest, user_message
from benchmarks.chaos_report import still_queued

pytestmark = pytest.mark.broker


async def test_the_census_reads_what_partition_queues_with_a_single_active_consumer_still_hold(
    rabbitmq_url: str,
) -> None:
    topology = Topology(namespace=f"census{new_id()[:6]}", partitions=4, tool_partitions=1)
    client = Client(rabbitmq_url, topology=topology)
    async with client:
        ids = []
        for n in range(3):
            request = AgentRequest(id=f"r{n}", input=[user_message("hi")])
            ids.append((await client.submit(request, session_id=f"s{n}")).envelope.id)
        queued = await still_queued(client, topology)
        assert await still_queued(client, topology) == {}  # drained
    assert sorted(queued) == sorted(ids)
    assert all(where.endswith(", delivered 1x by the broker") for where in queued.values())
