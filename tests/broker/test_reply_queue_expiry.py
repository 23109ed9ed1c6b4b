"""A durable reply queue left behind (an abandoned batch's) is deleted by RabbitMQ once unused."""

from __future__ import annotations

import anyio
import pytest

from agentqueue import Client, Settings
from agentqueue.broker.urls import open_broker
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


def queue_names(node: LocalRabbitMQ) -> set[str]:
    # Listed with rabbitmqctl: a passive declare would count as a use and restart the clock.
    return set(node.ctl("list_queues", "name", "--quiet", "--no-table-headers").split())


async def test_an_unused_durable_reply_queue_expires_and_a_consumed_one_stays(
    rabbitmq: LocalRabbitMQ,
) -> None:
    settings = Settings(broker=rabbitmq.url, namespace=f"rx{new_id()[:6]}", reply_queue_expiry=2)
    left, kept = (settings.topology.reply_queue(f"batch-{name}") for name in ("left", "kept"))
    async with open_broker(rabbitmq.url) as broker:
        async with Client(broker, settings=settings, reply_queue=left, durable_replies=True):
            pass  # declared, then abandoned
        async with Client(broker, settings=settings, reply_queue=kept, durable_replies=True):
            with anyio.fail_after(60):
                while left in await anyio.to_thread.run_sync(queue_names, rabbitmq):
                    await anyio.sleep(0.5)  # RabbitMQ deletes it on its own timer
            # Consumed all the while (a batch resumed in time): not expired.
            assert kept in await anyio.to_thread.run_sync(queue_names, rabbitmq)
