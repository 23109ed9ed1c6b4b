"""Worker deaths alone never dead-letter a healthy event: only its own unfinished runs count.

The worker's connection runs through a TCP proxy whose `cut()` drops it as a killed worker's
would. Its event waits, prefetched, for its session's lease (held by a worker that is gone), so
it never starts; each cut hands it back to RabbitMQ.

Known gap: on the RabbitMQ 3.10 this suite runs, this test passes with the old code too (a cut
connection's return does not seem to reach the old x-delivery-limit of 20); the hand-back by
nack of a stopping or handing-over worker, the likelier path in the chaos runs, is not covered.
"""

from __future__ import annotations

import time

import anyio
import pytest

from agentqueue import App
from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ToolCall, ToolResult, decode, encode, new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.proxies import ThreadedProxy, port_of

pytestmark = pytest.mark.broker

OLD_BROKER_LIMIT = 20  # the partition queues' x-delivery-limit before it became a crash guard


async def _delivered_again(
    client: RabbitMQBroker, worker: RabbitMQBroker, queue: str, since: int
) -> None:
    """Wait until the worker's connection came back after `since` reconnects and its new
    consumer holds the event again (none ready, one consumer)."""
    with anyio.fail_after(30):
        while worker.reconnects == since or not worker.connection.connected.is_set():
            await anyio.sleep(0.02)
        while (stats := await client.stats(queue)).ready != 0 or stats.consumers != 1:
            await anyio.sleep(0.02)


async def test_a_healthy_event_handed_back_by_more_worker_deaths_than_the_old_limit_is_answered(
    rabbitmq_url: str,
) -> None:
    topology = Topology(namespace=f"cl{new_id()[:6]}", partitions=1, tool_partitions=1)
    app = App("crash-loop")

    @app.tool()
    async def echo(text: str) -> str:
        return text

    reply_queue = topology.reply_queue("test")
    event_id = new_id()
    call = Envelope(
        id=event_id,
        session_id="s",
        correlation_id=event_id,
        reply_to=reply_queue,
        body=ToolCall(name="echo", arguments={"text": "hi"}, call_id=event_id),
        created_at=time.time(),
    )
    queue = topology.route(call)
    store = MemorySessionStore(f"memory://crash-{new_id()[:8]}")
    gone = await store.acquire("s", "a-worker-that-died", ttl=600)
    assert gone is not None
    proxy = ThreadedProxy(port_of(rabbitmq_url))
    async with RabbitMQBroker(rabbitmq_url) as client:
        await client.declare(topology)
        await client.declare_reply_queue(reply_queue)
        await client.publish(queue, encode(call))
        # aio-pika waits 5 s before reconnecting by default; a dead worker's successor is quicker
        worker_broker = RabbitMQBroker(proxy.url(rabbitmq_url) + "?reconnect_interval=0.1")
        await worker_broker.connect()
        worker = Worker(app, worker_broker, store, worker_settings(topology), role="all")  # type: ignore[arg-type]
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                with anyio.fail_after(30):
                    while (await client.stats(queue)).ready != 0:
                        await anyio.sleep(0.02)  # delivered to the worker, waiting for the lease
                cuts = 0
                while cuts <= OLD_BROKER_LIMIT:
                    since = worker_broker.reconnects
                    proxy.cut()  # handed back as by a killed worker, delivered once more
                    cuts += 1
                    await _delivered_again(client, worker_broker, queue, since)
                await store.release(gone)  # the session's old owner is gone for good
                with anyio.fail_after(30):
                    while (reply := await client.get(reply_queue)) is None:
                        await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            await reply.ack()
            assert await client.get(topology.dead_letter_queue) is None
        finally:
            await worker_broker.close()
            proxy.close()
    answer = decode(reply.body).body
    assert isinstance(answer, ToolResult) and answer.ok and answer.output == "hi"
    assert cuts == OLD_BROKER_LIMIT + 1
