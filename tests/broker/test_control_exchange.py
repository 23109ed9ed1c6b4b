"""The control exchange comes and goes with its listeners: neither a listener nor a broadcast
may fail because the last other listener went away at the wrong moment (a worker killed)."""

from __future__ import annotations

import aio_pika
import anyio
import pytest

from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


async def test_a_listener_whose_exchange_goes_while_it_binds_declares_it_again(
    rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"ctl{new_id()[:6]}-control"
    other = await aio_pika.connect(rabbitmq_url)
    real_bind = aio_pika.Queue.bind
    binds = 0

    async def bind_after_the_exchange_went(self, exchange, *args, **kwargs):  # type: ignore[no-untyped-def]
        # What a killed worker's last binding does: the auto-delete exchange goes between
        # our declare and our bind, the first time only.
        nonlocal binds
        binds += 1
        if binds == 1:
            channel = await other.channel()
            await channel.exchange_delete(topic)
            await channel.close()
        return await real_bind(self, exchange, *args, **kwargs)

    monkeypatch.setattr(aio_pika.Queue, "bind", bind_after_the_exchange_went)
    broker = RabbitMQBroker(rabbitmq_url)
    try:
        await broker.connect()
        subscription = await broker.listen(topic)
        await broker.broadcast(topic, b"hello")
        with anyio.fail_after(10):
            message = await subscription.__anext__()
        assert message.body == b"hello"
        assert binds == 2
        await subscription.close()
    finally:
        await broker.close()
        await other.close()


async def test_a_broadcast_after_every_listener_went_does_not_break_publishing(
    rabbitmq_url: str,
) -> None:
    topic = f"ctl{new_id()[:6]}-control"
    broker = RabbitMQBroker(rabbitmq_url)
    try:
        await broker.connect()
        subscription = await broker.listen(topic)
        await broker.broadcast(topic, b"one")
        await subscription.close()  # the last listener: its exchange is deleted with it
        await broker.broadcast(topic, b"nobody listens")
        queue = f"ctl{new_id()[:6]}-replies"
        await broker.declare_reply_queue(queue)
        await broker.publish(queue, b"a reply", sign=False)  # the publisher channel still works
        async with await broker.consume(queue) as replies:
            with anyio.fail_after(10):
                assert (await replies.__anext__()).body == b"a reply"
    finally:
        await broker.close()
