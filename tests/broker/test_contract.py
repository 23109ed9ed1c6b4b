"""What every broker promises: order, confirms, redelivery, one active consumer, dead letters."""

from __future__ import annotations

import anyio
import pytest

from agentqueue.broker.base import Broker, read_dead_letter
from agentqueue.broker.errors import QueueMissing
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ResultEvent, encode, new_id

pytestmark = pytest.mark.broker


async def take(subscription, n: int, timeout: float = 10.0, *, ack: bool = False):  # type: ignore[no-untyped-def]
    got = []
    with anyio.fail_after(timeout):
        async for delivery in subscription:
            got.append(delivery)
            if ack:
                await delivery.ack()
            if len(got) == n:
                break
    return got


async def test_a_partition_delivers_in_publish_order(broker: Broker, topology: Topology) -> None:
    queue = topology.queue("requests", 0)
    for i in range(50):
        await broker.publish(queue, f"m{i}".encode())
    async with await broker.consume(queue, prefetch=10) as sub:
        got = await take(sub, 50, ack=True)
        assert [d.body for d in got] == [f"m{i}".encode() for i in range(50)]


async def test_unacked_deliveries_go_to_the_next_consumer_in_order(
    broker: Broker, topology: Topology
) -> None:
    queue = topology.queue("requests", 1)
    for i in range(5):
        await broker.publish(queue, f"m{i}".encode())
    first = await broker.consume(queue, prefetch=5)
    second = await broker.consume(queue, prefetch=5)
    got = await take(first, 5)
    await got[0].ack()
    await first.close()  # m1..m4 were never acked: they must come back, in order
    again = await take(second, 4)
    assert [d.body for d in again] == [b"m1", b"m2", b"m3", b"m4"]
    assert all(d.redelivered and d.delivery_count == 2 for d in again)
    for d in again:
        await d.ack()
    await second.close()


async def test_only_one_consumer_of_a_partition_is_active(
    broker: Broker, topology: Topology
) -> None:
    queue = topology.queue("requests", 2)
    active = await broker.consume(queue, prefetch=10)
    standby = await broker.consume(queue, prefetch=10)
    for i in range(6):
        await broker.publish(queue, f"m{i}".encode())
    got = await take(active, 6)
    for d in got:
        await d.ack()
    await active.close()
    await broker.publish(queue, b"after")
    (late,) = await take(standby, 1)
    assert late.body == b"after"
    await late.ack()
    await standby.close()


async def test_a_nacked_delivery_is_delivered_again(broker: Broker, topology: Topology) -> None:
    queue = topology.queue("tools", 0)
    await broker.publish(queue, b"retry-me")
    async with await broker.consume(queue, prefetch=1) as sub:
        (first,) = await take(sub, 1)
        await first.nack(requeue=True)
        (second,) = await take(sub, 1)
        assert second.body == b"retry-me" and second.redelivered
        await second.ack()


async def test_a_dead_letter_keeps_the_bytes_and_the_reason(
    broker: Broker, topology: Topology
) -> None:
    queue = topology.queue("requests", 3)
    await broker.publish(queue, b"\x00 not an envelope")
    async with await broker.consume(queue, prefetch=1) as sub:
        (delivery,) = await take(sub, 1)
        await broker.dead_letter(
            delivery, "not a JSON envelope: bad bytes", topology, envelope_id="e9"
        )
    with anyio.fail_after(10):
        while (dead := await broker.get(topology.dead_letter_queue)) is None:
            await anyio.sleep(0.05)
    record = read_dead_letter(dead.body, topology.dead_letter_queue)
    assert record.reason == "not a JSON envelope: bad bytes"
    assert record.payload == b"\x00 not an envelope"
    assert record.queue == queue and record.envelope_id == "e9"
    await dead.ack()
    stats = await broker.stats(queue)
    assert stats.ready == 0


async def test_replies_reach_the_caller_that_waits_for_them_once(
    broker: Broker, topology: Topology
) -> None:
    queue = topology.reply_queue("contract")
    await broker.declare_reply_queue(queue)
    router = ReplyRouter(broker, queue)
    a, b, last = router.expect("req-a"), router.expect("req-b"), router.expect("req-last")

    def reply(correlation: str, kind: str, seq: int = 0) -> bytes:
        body = ResultEvent(request_id=correlation, kind=kind, seq=seq)  # type: ignore[arg-type]
        return encode(
            Envelope(
                id=f"{correlation}-{kind}-{seq}",
                session_id="s",
                correlation_id=correlation,
                body=body,
            )
        )

    async with anyio.create_task_group() as tg:
        await tg.start(router.run)
        for data in (
            reply("req-b", "delta", 1),
            reply("req-a", "final"),
            reply("req-b", "delta", 1),
            reply("req-b", "final"),
            reply("req-a", "final"),
            reply("req-last", "final"),  # routed after every reply before it
        ):
            await broker.publish(queue, data)
        with anyio.fail_after(10):
            got_a = await a.get()
            got_b = [await b.get(), await b.get()]
            await last.get()
        assert got_a.body.kind == "final"
        assert [e.body.kind for e in got_b] == ["delta", "final"]  # the duplicate delta was dropped
        assert a.empty() and b.empty() and router.waiting == 0  # the second final was dropped
        tg.cancel_scope.cancel()


async def test_a_publish_no_queue_takes_fails_as_a_missing_queue_not_dropped(
    broker: Broker, topology: Topology
) -> None:
    missing = topology.reply_queue(f"gone-{new_id()[:6]}")
    with pytest.raises(QueueMissing, match=f"queue '{missing}' does not exist"):
        await broker.publish(missing, b"an answer for a caller that left")
    await broker.declare_reply_queue(missing)  # back (its owner reconnected): it goes through
    await broker.publish(missing, b"an answer for a caller that came back")
    async with await broker.consume(missing) as sub:
        (delivery,) = await take(sub, 1, ack=True)
    assert delivery.body == b"an answer for a caller that came back"


async def test_a_copy_published_again_is_a_first_delivery_and_only_a_redelivery_is_redelivered(
    broker: Broker, topology: Topology
) -> None:
    # What tells a replay from a redelivery is the broker's own flag: never set on a copy a
    # publisher sent again, always set when the broker hands a message out a second time.
    queue = topology.queue("tools", 1)
    await broker.publish(queue, b"same bytes")
    await broker.publish(queue, b"same bytes")
    async with await broker.consume(queue, prefetch=2) as sub:
        first, copy = await take(sub, 2)
        assert not first.redelivered and not copy.redelivered
        await first.ack()
        await copy.nack(requeue=True)
        (again,) = await take(sub, 1)
        assert again.body == b"same bytes" and again.redelivered
        await again.ack()
