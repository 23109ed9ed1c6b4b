"""The acks of a consumer's channel leave together, and never ack what was not settled.

Settled deliveries are acked at the end of the event loop's turn: one `basic.ack multiple=True`
for the run from the oldest unsettled delivery, single acks for those behind one still running.
What is left unsettled goes back to the queue when the consumer closes; a wrong multiple ack
would have acked it (lost), a wrong tag would have closed the channel.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq.exceptions
import pytest

from agentqueue.broker.base import Delivery, Subscription
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from tests.waiting import wait_for

pytestmark = pytest.mark.broker

ACK_METHOD = b"\x00\x3c\x00\x50"  # class 60 (basic), method 80 (ack)


def _acks_written(records: list[logging.LogRecord]) -> list[list[tuple[int, bool]]]:
    """(delivery tag, multiple) of the ack methods in each write aiormq logged."""
    writes = []
    for record in records:
        payload = getattr(record.args[0], "payload", b"") if record.args else b""
        acks, at = [], 0
        while at + 7 <= len(payload):  # frame: type, channel (2), size (4), body, end octet
            size = int.from_bytes(payload[at + 3 : at + 7])
            body = payload[at + 7 : at + 7 + size]
            if payload[at] == 1 and body[:4] == ACK_METHOD:
                acks.append((int.from_bytes(body[4:12]), bool(body[12] & 1)))
            at += 7 + size + 1
        if acks:
            writes.append(acks)
    return writes


async def _deliveries(
    broker: RabbitMQBroker, queue: str, n: int
) -> tuple[Subscription, list[Delivery]]:
    await broker.declare_reply_queue(queue, durable=True)  # a quorum queue basic.get can read
    for i in range(n):
        await broker.publish(queue, f"m{i}".encode(), sign=False)
    subscription = await broker.consume(queue, prefetch=n)
    deliveries = [await anext(subscription) for _ in range(n)]
    assert [d.body for d in deliveries] == [f"m{i}".encode() for i in range(n)]
    return subscription, deliveries


async def _left_in(
    broker: RabbitMQBroker, subscription: Subscription, queue: str, expected: int
) -> int:
    """Close the consumer (its unsettled deliveries go back), then count the queue."""
    await subscription.close()
    counts: list[int] = []

    async def settled() -> bool:
        counts.append((await broker.stats(queue)).ready)
        return counts[-1] == expected

    try:
        await wait_for(settled, 10, f"{expected} messages back in {queue}")
    except TimeoutError:
        pass
    return counts[-1]


@pytest.fixture
def topology() -> Topology:
    return Topology(namespace=f"ak{new_id()[:6]}", partitions=1, tool_partitions=1)


async def test_deliveries_settled_in_one_turn_leave_in_one_ack_frame(
    rabbitmq_url: str, topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    queue = topology.reply_queue("acks")
    async with RabbitMQBroker(rabbitmq_url) as broker:
        subscription, deliveries = await _deliveries(broker, queue, 50)
        caplog.set_level(logging.DEBUG, logger="aiormq.connection")
        await asyncio.gather(*(d.ack() for d in reversed(deliveries)))
        writes = _acks_written(caplog.records)
        caplog.set_level(logging.WARNING, logger="aiormq.connection")
        assert await _left_in(broker, subscription, queue, 0) == 0
        await broker.delete_queue(queue)
    assert writes == [[(50, True)]]


async def test_acks_behind_an_unsettled_delivery_leave_it_unacked(
    rabbitmq_url: str, topology: Topology
) -> None:
    queue = topology.reply_queue("acks")
    async with RabbitMQBroker(rabbitmq_url) as broker:
        subscription, (_, *rest) = await _deliveries(broker, queue, 6)
        await asyncio.gather(*(d.ack() for d in rest))
        assert await _left_in(broker, subscription, queue, 1) == 1
        again = await broker.get(queue)
        assert again is not None and again.body == b"m0" and again.redelivered
        await again.ack()
        await broker.delete_queue(queue)


async def test_acks_and_nacks_in_any_order_settle_each_delivery_once(
    rabbitmq_url: str, topology: Topology
) -> None:
    queue = topology.reply_queue("acks")
    async with RabbitMQBroker(rabbitmq_url) as broker:
        subscription, d = await _deliveries(broker, queue, 10)
        await d[3].ack()  # alone: 0-2 are unsettled
        await d[1].nack(requeue=True)  # handed back: 0 still unsettled before it
        await asyncio.gather(d[0].ack(), d[2].ack(), d[5].ack())  # a run 0-3, 5 alone
        await d[4].nack(requeue=False)  # dropped
        await asyncio.gather(*(x.ack() for x in d[6:9]))  # a run spanning 4 and 5 up to 8
        # A channel closed by a bad tag would have handed back everything still unacked.
        left = await _left_in(broker, subscription, queue, 2)
        back = [await broker.get(queue) for _ in range(left)]
        bodies = sorted(x.body for x in back if x is not None)
        for x in back:
            if x is not None:
                await x.ack()
        await broker.delete_queue(queue)
    assert bodies == [b"m1", b"m9"]


async def test_deliveries_left_in_the_inbox_by_a_lost_channel_fail_to_ack_and_come_again(
    rabbitmq_url: str, topology: Topology
) -> None:
    queue = topology.reply_queue("lost")
    async with RabbitMQBroker(rabbitmq_url) as broker:
        await broker.declare_reply_queue(queue, durable=True)
        for i in range(4):
            await broker.publish(queue, f"m{i}".encode(), sign=False)
        subscription = await broker.consume(queue, prefetch=4)
        first = await anext(subscription)
        await first.ack()
        await first.ack()  # a second ack of one tag: RabbitMQ closes the channel (406)

        def channel_closed() -> bool:
            try:
                first._message.channel  # type: ignore[attr-defined]  # noqa: B018
            except aiormq.exceptions.ChannelInvalidStateError:
                return True
            return False

        await wait_for(channel_closed, 10, "the channel to close")
        # m1-m3 were delivered on the channel that is gone: taken now, their acks fail...
        for i in range(1, 4):
            left = await anext(subscription)
            assert left.body == f"m{i}".encode()
            with pytest.raises(BrokerConnectionError, match="cannot ack a delivery"):
                await left.ack()
        # ...and the consumer's new channel has them again.
        again = [await anext(subscription) for _ in range(3)]
        assert [d.body for d in again] == [b"m1", b"m2", b"m3"]
        assert all(d.redelivered for d in again)
        await asyncio.gather(*(d.ack() for d in again))
        assert await _left_in(broker, subscription, queue, 0) == 0
        await broker.delete_queue(queue)
