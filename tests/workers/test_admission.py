"""Admission on running workers: each finding of the admission issue, its trigger sent, closed.

Every test sends the bytes that used to kill, stall or fool a worker and shows what happens now:
the reason on the dead letter, the handler never ran, nothing left un-acked, and the worker
still serving a valid message sent after the garbage.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aio_pika
import anyio
import pytest

from agentqueue import App
from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import (
    Envelope,
    ToolCall,
    decode_dead_letter,
    encode,
    new_id,
)
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.admission import Admission
from agentqueue.workers.redis_store import RedisSessionStore
from agentqueue.workers.session_store import MemorySessionStore, SessionStore
from agentqueue.workers.sqlite_store import SQLiteSessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

KEYS = KeyRing([("k2", b"current-secret-0123456789"), ("k1", b"previous-secret-0123456789")])
BAD_SIGNATURE = (
    "bad signature for key id 'k2': the envelope was altered or signed with another secret"
)

runs: list[str] = []
app = App("admission")


@app.tool("transfer")
async def transfer(account: str) -> str:
    """Move money (test tool)."""
    runs.append(account)
    return f"moved from {account}"


def call(account: str, *, reply_to: str | None = None, created_at: float | None = None) -> bytes:
    call_id = new_id()
    return encode(
        Envelope(
            id=call_id,
            session_id=account,
            correlation_id=call_id,
            reply_to=reply_to,
            body=ToolCall(name="transfer", arguments={"account": account}, call_id=call_id),
            created_at=time.time() if created_at is None else created_at,
        )
    )


class Served:
    """A worker serving `app` on one tool partition, and what it dead-letters."""

    def __init__(self, broker: Broker, topology: Topology, worker: Worker) -> None:
        self.broker, self.topology, self.worker = broker, topology, worker
        self.queue = topology.queue("tools", 0)

    async def send(self, data: bytes) -> None:
        await self.broker.publish(self.queue, data, sign=False)  # bytes as they are

    async def dead_letters(self, n: int) -> list[str]:
        reasons: list[str] = []
        with anyio.fail_after(20):
            while len(reasons) < n:
                dead = await self.broker.get(self.topology.dead_letter_queue)
                if dead is None:
                    await anyio.sleep(0.02)
                    continue
                reasons.append(decode_dead_letter(dead.body).reason)
                await dead.ack()
        return reasons

    async def wait_ran(self, account: str) -> None:
        with anyio.fail_after(20):
            while account not in runs:
                await anyio.sleep(0.02)

    async def settled(self) -> None:
        """Nothing left on the partition: none ready, none un-acked."""
        with anyio.fail_after(20):
            while True:
                stats = await self.broker.stats(self.queue)
                if stats.ready == 0 and not stats.unacked:
                    return
                await anyio.sleep(0.02)


@asynccontextmanager
async def serving(
    keys: KeyRing | None, *, url: str | None = None, store: SessionStore | None = None
) -> AsyncIterator[Served]:
    topology = Topology(namespace=f"adm{new_id()[:6]}", partitions=1, tool_partitions=1)
    broker = open_broker(url or f"memory://adm-{new_id()[:8]}", signing=keys)
    async with broker, anyio.create_task_group() as tg:
        worker = Worker(
            app,
            broker,
            store or MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(topology),
        )
        await tg.start(worker.run)
        yield Served(broker, topology, worker)
        worker.stop()


async def test_a_non_ascii_signature_is_dead_lettered_and_the_worker_keeps_serving() -> None:
    runs.clear()
    async with serving(KEYS) as served:
        # The finding: `"sig":"k2:é"` made hmac.compare_digest raise TypeError out of the
        # worker, and the redelivered message killed the next worker of the partition.
        await served.send(call("acct-1")[:-1] + ',"sig":"k2:é"}'.encode())
        await served.send(call("acct-2")[:-1] + b',"sig":"k2:\xff\xfe"}')
        await served.send(KEYS.sign(call("acct-3")))
        assert await served.dead_letters(2) == [BAD_SIGNATURE, BAD_SIGNATURE]
        await served.wait_ran("acct-3")
        await served.settled()
    assert runs == ["acct-3"]


async def test_messages_with_invalid_utf8_never_stall_the_partition_and_each_caller_hears_why() -> (
    None
):
    runs.clear()
    async with serving(None) as served:
        replies = served.topology.reply_queue("utf8")
        await served.broker.declare_reply_queue(replies)
        # The finding: invalid UTF-8 in a string field made addressing() raise before the
        # message was dead-lettered or acked; 32 of them filled the prefetch for good.
        for i in range(40):
            await served.send(
                b'{"id":"bad-%d","session_id":"s\xff","reply_to":"%s","body":{"type":"tool_call",'
                b'"name":"transfer","arguments":{"account":"x"}}}' % (i, replies.encode())
            )
        await served.send(call("after-garbage"))
        reasons = await served.dead_letters(40)
        assert set(reasons) == {
            "not a JSON envelope: 'utf-8' codec can't decode byte 0xff in position 1:"
            " invalid start byte"
        }
        await served.wait_ran("after-garbage")
        await served.settled()
        answered: list[str] = []
        async with await served.broker.consume(replies) as subscription:
            with anyio.fail_after(20):
                async for delivery in subscription:  # each caller reads a failed result
                    answered.append(delivery.body.decode())
                    await delivery.ack()
                    if len(answered) == 40:
                        break
        assert all('"kind":"failed"' in a and "not a JSON envelope" in a for a in answered)
    assert runs == ["after-garbage"]


@pytest.mark.broker
async def test_a_second_copy_rabbitmq_did_not_redeliver_is_a_replay_whatever_its_headers_say(
    rabbitmq_url: str,
) -> None:
    runs.clear()
    async with serving(KEYS, url=rabbitmq_url) as served:
        signed = KEYS.sign(call("acct-4"))
        await served.send(signed)
        await served.wait_ran("acct-4")
        # The finding: the replay guard trusted `x-delivery-count`, which any publisher sets.
        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(signed, headers={"x-delivery-count": 1}),
                routing_key=served.queue,
            )
        (reason,) = await served.dead_letters(1)
        assert reason.startswith("replayed envelope refused: ")
        assert reason.endswith(" with this signature was already received")
        await served.settled()
        await served.send(KEYS.sign(call("acct-5")))
        await served.wait_ran("acct-5")
    assert runs == ["acct-4", "acct-5"]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.broker)])
def store_opener(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Opens a new connection to one shared store each call (another process, or a restart)."""
    if request.param == "sqlite":
        path = tmp_path / "sessions.db"
        return lambda: SQLiteSessionStore(f"sqlite:///{path}")
    url = request.getfixturevalue("redis_url")
    prefix = f"adm{new_id()[:6]}"
    return lambda: RedisSessionStore(url, prefix=prefix)


async def test_the_replay_window_holds_across_processes_and_restarts(store_opener) -> None:  # type: ignore[no-untyped-def]
    # The finding: the replay cache was per process; a copy sent to another worker (or after
    # a restart) ran again.
    signed = KEYS.sign(call("acct-6"))
    first, second = store_opener(), store_opener()
    try:
        assert isinstance(
            await Admission(KEYS, store=first).admit(signed, redelivered=False), Envelope
        )
        elsewhere = await Admission(KEYS, store=second).admit(signed, redelivered=False)
        assert not isinstance(elsewhere, Envelope)
        assert elsewhere.reason.startswith("replayed envelope refused: ")
        assert not elsewhere.answerable  # its caller is owed the first copy's answer
        # The broker's own redelivery of it is not a replay.
        assert isinstance(
            await Admission(KEYS, store=second).admit(signed, redelivered=True), Envelope
        )
    finally:
        await first.close()
        await second.close()
    restarted = store_opener()
    try:
        again = await Admission(KEYS, store=restarted).admit(signed, redelivered=False)
        assert not isinstance(again, Envelope)
        assert again.reason.startswith("replayed envelope refused: ")
    finally:
        await restarted.close()


async def test_a_trigger_retry_keeps_its_message_id_and_a_copy_published_again_does_not() -> None:
    admission = Admission(KEYS, store=MemorySessionStore(f"memory://{new_id()[:8]}"))
    signed = KEYS.sign(call("acct-7"))
    first = await admission.admit(signed, redelivered=False, message_id="MSG-1")
    retried = await admission.admit(signed, redelivered=False, message_id="MSG-1")
    published_again = await admission.admit(signed, redelivered=False, message_id="MSG-2")
    assert isinstance(first, Envelope) and isinstance(retried, Envelope)
    assert not isinstance(published_again, Envelope)
    assert published_again.reason.startswith("replayed envelope refused: ")


@pytest.mark.parametrize(
    "kind", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.broker)]
)
async def test_the_replay_window_forgets_what_is_older_than_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "memory":
        store: SessionStore = MemorySessionStore(f"memory://{new_id()[:8]}")
    elif kind == "sqlite":
        store = SQLiteSessionStore(f"sqlite:///{tmp_path}/seen.db")
    else:
        store = RedisSessionStore(request.getfixturevalue("redis_url"), prefix=new_id()[:8])
    try:
        assert await store.first_sighting("sig-a", "m1", 0.2)
        assert not await store.first_sighting("sig-a", "m2", 0.2)
        with anyio.fail_after(10):  # once expired, the key is free again: the window is bounded
            while not await store.first_sighting("sig-a", "m3", 60):
                await anyio.sleep(0.05)
        assert not await store.first_sighting("sig-a", "m4", 60)
    finally:
        await store.close()
