"""The broker contract suite runs against every broker the suite can start."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol.ids import new_id

BROKERS = ["memory", "amqp", "mns"]


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest) -> str:
    kind = request.param
    if kind == "memory":
        return f"memory://contract-{new_id()[:8]}"
    return request.getfixturevalue(f"{kind}_broker_url")


@pytest.fixture
def amqp_broker_url(rabbitmq_url: str) -> str:
    return rabbitmq_url


@pytest.fixture
def mns_broker_url(mns_url: str) -> str:
    return mns_url


@pytest.fixture
def topology() -> Topology:
    return Topology(namespace=f"t{new_id()[:8]}", partitions=4, tool_partitions=2)


@pytest.fixture
async def broker(broker_url: str, topology: Topology) -> AsyncIterator[Broker]:
    async with open_broker(broker_url) as b:
        await b.declare(topology)
        yield b
