"""Consumers across a lost connection: they come back by themselves, and a closed one stays closed.

The connection runs through a TCP proxy whose `cut()` drops it as a network failure would. The
orphan case is what once lost requests in the chaos run: a subscription closed (a partition
handed over) while the connection was coming back left a consumer open that nothing read, and
single-active-consumer made it the partition's owner, so the partition's events waited for ever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentqueue.broker.errors import BrokerError
from agentqueue.broker.rabbitmq import RESUBSCRIBE_PAUSE, RabbitMQBroker
from agentqueue.broker.topology import REQUESTS, Topology
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.protocol import new_id
from tests.proxies import ThreadedProxy, port_of

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
async def proxied(
    rabbitmq_url: str,
) -> AsyncIterator[tuple[RabbitMQBroker, ThreadedProxy, Topology]]:
    proxy = ThreadedProxy(port_of(rabbitmq_url))
    topology = Topology(namespace=f"rc{new_id()[:6]}", partitions=2, tool_partitions=1)
    broker = RabbitMQBroker(proxy.url(rabbitmq_url))
    try:
        await broker.connect()
        await broker.declare(topology)
        yield broker, proxy, topology
    finally:
        await broker.close()
        proxy.close()


async def _reconnected(broker: RabbitMQBroker, before: int) -> None:
    """Wait until the connection has come back since `before` (its count of reconnects)."""
    with anyio.fail_after(30):
        while broker.reconnects == before or not broker.connection.connected.is_set():
            await anyio.sleep(0.05)


async def test_a_subscription_consumes_again_after_its_connection_is_cut(
    proxied: tuple[RabbitMQBroker, ThreadedProxy, Topology],
) -> None:
    broker, proxy, topology = proxied
    queue = topology.queue(REQUESTS, 0)
    subscription = await broker.consume(queue)
    try:
        await broker.publish(queue, b"before", sign=False)
        with anyio.fail_after(10):
            first = await subscription.__anext__()
        await first.ack()

        before = broker.reconnects
        assert proxy.cut() == 1
        await _reconnected(broker, before)
        await _publish_until_confirmed(broker, queue, b"after")
        with anyio.fail_after(30):
            # The first one comes again if its ack was lost with the connection.
            while (delivery := await subscription.__anext__()).body != b"after":
                await delivery.ack()
        await delivery.ack()
        assert (await broker.stats(queue)).consumers == 1
    finally:
        await subscription.close()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0])
async def test_a_subscription_closed_around_a_reconnect_leaves_no_consumer_behind(
    proxied: tuple[RabbitMQBroker, ThreadedProxy, Topology], delay: float
) -> None:
    broker, proxy, topology = proxied
    queue = topology.queue(REQUESTS, 1)
    subscription = await broker.consume(queue)
    before = broker.reconnects
    proxy.cut()
    await anyio.sleep(delay)  # close at various points of the reconnect and the re-subscribe
    await subscription.close()
    await _reconnected(broker, before)
    await anyio.sleep(1.5)  # past any re-subscribe that was under way

    assert (await broker.stats(queue)).consumers == 0
    # The next owner gets the partition's events: nothing holds them.
    await broker.publish(queue, b"for the next owner", sign=False)
    async with await broker.consume(queue) as successor:
        with anyio.fail_after(10):
            delivery = await successor.__anext__()
        assert delivery.body == b"for the next owner"
        await delivery.ack()


async def test_across_a_broker_restart_open_subscriptions_come_back_and_closed_ones_stay_closed(
    tmp_path: Path,
) -> None:
    node = LocalRabbitMQ(tmp_path / "rabbit").start()  # its own node: the shared one stays up
    try:
        topology = Topology(namespace=f"rr{new_id()[:6]}", partitions=12, tool_partitions=1)
        queues = topology.queues(REQUESTS)
        async with RabbitMQBroker(node.url) as broker:
            await broker.declare(topology)
            await anyio.sleep(1.5)  # RabbitMQ 3.10 forgets a quorum queue declared just before
            subscriptions = {q: await broker.consume(q) for q in queues}
            to_close = queues[::2]  # closed one by one while the broker restarts and after
            before = broker.reconnects
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, node.restart)
                for queue in to_close:
                    await anyio.sleep(0.6)
                    await subscriptions.pop(queue).close()
            await _reconnected(broker, before)
            await anyio.sleep(RESUBSCRIBE_PAUSE * 3)  # past any re-subscribe under way

            for queue in to_close:
                assert (await broker.stats(queue)).consumers == 0, queue
            for queue, subscription in subscriptions.items():
                assert (await broker.stats(queue)).consumers == 1, queue
                await _publish_until_confirmed(broker, queue, queue.encode())
                with anyio.fail_after(10):
                    delivery = await subscription.__anext__()
                assert delivery.body == queue.encode()
                await delivery.ack()
                await subscription.close()
    finally:
        node.stop()


async def _publish_until_confirmed(broker: RabbitMQBroker, queue: str, body: bytes) -> None:
    with anyio.fail_after(30):
        while True:  # publishing fails until the publisher channel is back
            try:
                await broker.publish(queue, body, sign=False)
                return
            except BrokerError:
                await anyio.sleep(0.2)
