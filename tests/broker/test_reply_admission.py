"""Replies pass the same admission as events: forged or unsigned ones are dropped and counted."""

from __future__ import annotations

import anyio

from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.protocol import Envelope, ResultEvent, ToolResult, encode, new_id
from agentqueue.protocol.admission import addressing
from agentqueue.protocol.signing import KeyRing
from tests.workers.test_admission import KEYS, call, runs, serving


async def test_a_forged_or_unsigned_reply_is_dropped_and_counted_and_the_genuine_one_arrives() -> (
    None
):
    url = f"memory://replies-{new_id()[:8]}"
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        broker.signing = KEYS
        queue = f"reply-{new_id()[:8]}"
        await broker.declare_reply_queue(queue)
        router = ReplyRouter(broker, queue)
        await tg.start(router.run)
        inbox = router.expect("c1")

        def final(text: str) -> bytes:
            body = ResultEvent(request_id="c1", kind="final", text=text)
            return encode(Envelope(id=new_id(), session_id="s", correlation_id="c1", body=body))

        # The finding: anyone who could publish to a reply queue could forge the final answer.
        await broker.publish(queue, final("forged, unsigned"), sign=False)
        forger = KeyRing([("k2", b"an-attackers-guess-of-the-key")])
        await broker.publish(queue, forger.sign(final("forged, wrong key")), sign=False)
        await broker.publish(queue, b"\xff not even JSON", sign=False)
        await broker.publish(queue, final("genuine"))  # signed with the broker's key
        with anyio.fail_after(10):
            reply = await inbox.get()
        assert reply.body.text == "genuine"  # type: ignore[union-attr]
        assert router.refused == 3
        with anyio.fail_after(10):
            while (await broker.stats(queue)).unacked or (await broker.stats(queue)).ready:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


async def test_replies_a_signing_worker_sends_are_signed_and_pass_the_callers_admission() -> None:
    runs.clear()
    async with serving(KEYS) as served:
        replies = served.topology.reply_queue("signed")
        await served.broker.declare_reply_queue(replies)
        router = ReplyRouter(served.broker, replies)
        async with anyio.create_task_group() as tg:
            await tg.start(router.run)
            data = call("acct-8", reply_to=replies)
            inbox = router.expect(addressing(data).id or "")
            await served.send(KEYS.sign(data))
            with anyio.fail_after(20):
                reply = await inbox.get()
            assert isinstance(reply.body, ToolResult) and reply.body.ok
            assert reply.sig is not None and reply.sig.startswith("k2:")
            assert router.refused == 0
            tg.cancel_scope.cancel()
