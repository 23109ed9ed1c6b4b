"""On RabbitMQ an event that kills its worker every time is still dead-lettered as poison."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ToolCall, decode, encode, new_id
from tests.processes import WorkerProcess, worker_args

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _call(name: str, arguments: dict, reply_to: str) -> Envelope:
    call = new_id()
    return Envelope(
        id=call,
        session_id="s",
        correlation_id=call,
        reply_to=reply_to,
        body=ToolCall(name=name, arguments=arguments, call_id=call),
        created_at=time.time(),
    )


async def test_an_event_that_kills_every_worker_running_it_is_dead_lettered_with_its_reason(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"pw{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    poison = _call("poison", {}, reply_queue)
    after = _call("record", {"session": "s", "seq": 1}, reply_queue)
    store = f"sqlite:///{tmp_path}/s.db"
    args = worker_args("tests.apps.fc_tools:app", rabbitmq_url, ns, store, partitions=1)
    env = {
        "AGENTQUEUE_TEST_LOG": str(tmp_path / "effects.log"),
        "AGENTQUEUE_DELIVERY_LIMIT": "2",
        "AGENTQUEUE_LEASE_TTL": "1",  # a killed worker's lease on the session lapses soon
    }
    async with RabbitMQBroker(rabbitmq_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        for envelope in (poison, after):
            await broker.publish(topology.route(envelope), encode(envelope))
        replies: dict[str, Envelope] = {}
        deaths = 0
        with anyio.fail_after(120):
            while len(replies) < 2:
                worker = WorkerProcess(*args, env=env)
                try:
                    while worker.proc.poll() is None and len(replies) < 2:
                        if (delivery := await broker.get(reply_queue)) is not None:
                            await delivery.ack()
                            reply = decode(delivery.body)
                            replies[reply.correlation_id or ""] = reply
                        else:
                            await anyio.sleep(0.05)
                    deaths += worker.proc.poll() is not None
                finally:
                    worker.kill()
        dead = await broker.get(topology.dead_letter_queue)
        assert dead is not None
        await dead.ack()
    record = read_dead_letter(dead.body, topology.dead_letter_queue)
    assert record.envelope_id == poison.id
    assert record.reason == (
        "delivered 3 times without being settled (a worker probably crashed while handling it)"
    )
    assert deaths == 2  # the third run was never started: dead-lettered unrun
    assert not replies[poison.id].body.ok  # type: ignore[union-attr]
    assert replies[after.id].body.output == "s:1"  # type: ignore[union-attr]
