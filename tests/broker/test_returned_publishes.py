"""A publish RabbitMQ returns (no queue to route it to) fails as `QueueMissing`, every one of
many at once: none is confirmed as delivered, none is an unhandled message in aiormq's log."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentqueue.broker.errors import QueueMissing
from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


async def test_concurrent_publishes_to_a_missing_reply_queue_each_fail_and_none_is_unhandled(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    topology = Topology(namespace=f"rt{new_id()[:6]}", partitions=1, tool_partitions=1)
    here, gone = topology.reply_queue("here"), topology.reply_queue("gone")
    caplog.set_level(logging.DEBUG, logger="aiormq")
    async with RabbitMQBroker(rabbitmq_url) as broker:
        await broker.declare_reply_queue(here)
        outcomes = await asyncio.gather(
            *(broker.publish(gone if n % 2 else here, b"reply", sign=False) for n in range(40)),
            return_exceptions=True,
        )
        delivered = 0
        while await broker.get(here) is not None:
            delivered += 1
        await broker.delete_queue(here)
    missing = [o for n, o in enumerate(outcomes) if n % 2]
    assert all(isinstance(o, QueueMissing) for o in missing), missing
    assert str(missing[0]) == (
        f"queue {gone!r} does not exist (RabbitMQ could not route the message);"
        " declare the topology first, or the reply queue's owner is gone"
    )
    assert [o for n, o in enumerate(outcomes) if not n % 2] == [None] * 20
    assert delivered == 20
    assert not [r for r in caplog.records if "Unhandled message" in r.getMessage()]
