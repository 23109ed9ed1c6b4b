"""Every path through the pipeline ends settled: an answer nobody can receive is kept, a
dead letter that cannot be published hands the message back, FC admits only signed envelopes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from agentqueue import App
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import Envelope, ToolCall, decode, decode_dead_letter, encode, new_id
from agentqueue.workers import fc
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.workers.test_delivery import background
from tests.workers.test_fc_handler import drain, effects, lines  # noqa: F401


def _call(name: str, reply_to: str, *, deadline: float | None = None) -> Envelope:
    event_id = new_id()
    return Envelope(
        id=event_id,
        session_id="s1",
        correlation_id=event_id,
        reply_to=reply_to,
        body=ToolCall(name=name, arguments={}, call_id=event_id),
        created_at=time.time(),
        deadline=deadline,
    )


async def _dead_letter(broker: MemoryBroker, topology: Topology, timeout: float = 10):  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while (delivery := await broker.get(topology.dead_letter_queue)) is None:
            await anyio.sleep(0.02)
    await delivery.ack()
    return decode_dead_letter(delivery.body)


async def test_an_answer_whose_reply_queue_is_gone_is_kept_on_the_dead_letter_queue() -> None:
    app = App("gone")

    @app.tool("ping", idempotent=True)  # an idempotent tool keeps no stored reply
    async def ping() -> str:
        return "pong"

    topology = Topology(namespace="gone", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://gone-{new_id()[:8]}") as broker, background() as tg:
        store = MemorySessionStore(f"memory://gone-{new_id()[:8]}")
        await tg.start(Worker(app, broker, store, worker_settings(topology), role="tools").run)
        call = _call("ping", "gone-reply-nobody", deadline=time.time() + 1.0)
        await broker.publish(topology.queue("tools", 0), encode(call))
        record = await _dead_letter(broker, topology)
        queue = await broker.stats(topology.queue("tools", 0))
    assert record.reason == "no one to answer: reply queue 'gone-reply-nobody' does not exist"
    assert record.envelope_id == call.id and record.queue == "gone-reply-nobody"
    answer = decode(record.payload)
    assert answer.correlation_id == call.id and answer.body.output == "pong"  # type: ignore[union-attr]
    assert (queue.ready, queue.unacked) == (0, 0)  # the event itself was acked


async def test_a_refused_message_whose_dead_letter_cannot_be_published_is_handed_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("no-dlq")
    topology = Topology(namespace="nodlq", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://nodlq-{new_id()[:8]}") as broker, background() as tg:
        store = MemorySessionStore(f"memory://nodlq-{new_id()[:8]}")
        await tg.start(Worker(app, broker, store, worker_settings(topology), role="tools").run)
        await broker.delete_queue(topology.dead_letter_queue)  # dead-lettering now fails
        queue = topology.queue("tools", 0)
        await broker.publish(queue, b"\xff\xfe not an envelope")
        handed_back = "could not be settled; handing nodlq-tools-0 back"
        with anyio.fail_after(10):  # the dead letter failed: handed back, not acked or stranded
            while handed_back not in caplog.text:
                await anyio.sleep(0.02)
        await broker.declare(topology)  # the dead-letter queue is back
        record = await _dead_letter(broker, topology)
        with anyio.fail_after(10):
            while (stats := await broker.stats(queue)).ready + stats.unacked:
                await anyio.sleep(0.02)
    assert record.reason.startswith("not a JSON envelope:")
    assert record.payload == b"\xff\xfe not an envelope"


def test_an_unsigned_tool_call_is_refused_by_the_fc_handler_when_keys_are_set(
    effects: Path,  # noqa: F811
    local_mns: LocalMNS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTQUEUE_SIGNING_KEYS", "k1:0123456789abcdef0123456789abcdef")
    forged = Envelope(
        id="unsigned-1",
        session_id="s1",
        correlation_id="unsigned-1",
        reply_to="fcx-reply-fixtures",
        body=ToolCall(name="record", arguments={"session": "s1", "seq": 1}, call_id="u1"),
        created_at=0.0,
    )
    payload = json.dumps(
        [{"requestId": "r1", "messageId": "m1", "messageBody": encode(forged).decode()}]
    )
    result = json.loads(fc.handler(payload.encode(), None))
    assert result == {"handled": 0, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    (dead,) = drain(local_mns, "fcx-dead-letters")
    record = read_dead_letter(dead, "fcx-dead-letters")
    assert record.reason == (
        "unsigned envelope refused: this worker runs only envelopes signed with one of its"
        " keys (k1)"
    )
    assert lines(effects) == []  # the tool never ran
