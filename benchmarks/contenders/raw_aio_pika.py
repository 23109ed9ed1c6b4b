"""Raw aio-pika, the ceiling: agentqueue's topology by hand, with nothing on top.

Durable quorum partition queues with single-active-consumer behind a direct exchange, persistent
messages, publisher confirms on every publish (requests and replies), an exclusive reply queue
matched by correlation id, and the worker acks only after its reply is confirmed.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import aio_pika
import aio_pika.abc

from agentqueue.protocol.partitioning import partition_for
from benchmarks.contenders.common import (
    ECHO_TEXT,
    PYTHON,
    BenchEnv,
    latency_job,
    ordered_job,
    pipelined_job,
    ready_job,
    split_partitions,
)

NAME = "raw aio-pika"
CONFIG = (
    "16 quorum queues (single active consumer) on a direct exchange, persistent, "
    "publisher confirms, exclusive reply queue + correlation ids, ack after confirmed reply"
)
PREFETCH = 256


def worker_commands(env: BenchEnv, workers: int) -> list[list[str]]:
    """One process per worker, each owning its share of the partitions."""
    return [
        [PYTHON, "-m", "benchmarks.contenders.raw_aio_pika", str(i), str(workers)]
        for i in range(workers)
    ]


def _queue(env: BenchEnv, p: int) -> str:
    return f"{env.namespace}-tools-{p}"


async def _declare(connection: aio_pika.abc.AbstractConnection, env: BenchEnv) -> None:
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        f"{env.namespace}-tools", aio_pika.ExchangeType.DIRECT, durable=True
    )
    for p in range(env.partitions):
        queue = await channel.declare_queue(
            _queue(env, p),
            durable=True,
            arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
        )
        await queue.bind(exchange, routing_key=str(p))
    await channel.close()


async def serve(env: BenchEnv, index: int, workers: int) -> None:
    """Answer every request on this worker's partitions until killed."""
    connection = await aio_pika.connect_robust(env.amqp_url)
    await _declare(connection, env)
    publisher = await connection.channel(publisher_confirms=True)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = str(time.monotonic_ns()).encode() if message.type == "stamp" else message.body
        reply = aio_pika.Message(
            body,
            correlation_id=message.correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await publisher.default_exchange.publish(reply, routing_key=message.reply_to or "")
        await message.ack()

    for p in split_partitions(env.partitions, workers, index):
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(_queue(env, p), ensure=False)
        await queue.consume(handle)
    await asyncio.Future()


class RawClient:
    """Publishes to partition exchanges with confirms; resolves futures from the reply queue."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.pending: dict[str, asyncio.Future[bytes]] = {}

    async def __aenter__(self) -> RawClient:
        self.connection = await aio_pika.connect_robust(self.env.amqp_url)
        await _declare(self.connection, self.env)
        self.channel = await self.connection.channel(publisher_confirms=True)
        self.exchange = await self.channel.get_exchange(f"{self.env.namespace}-tools", ensure=False)
        consumer = await self.connection.channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        self.reply_queue = await consumer.declare_queue(exclusive=True, auto_delete=True)
        await self.reply_queue.consume(self._on_reply)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self.pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)
        await message.ack()

    async def call(self, body: bytes, session: str, kind: str | None = None) -> bytes:
        """Publish one request on the session's partition and wait for its reply."""
        cid = uuid.uuid4().hex
        future = self.pending[cid] = asyncio.get_running_loop().create_future()
        message = aio_pika.Message(
            body,
            correlation_id=cid,
            reply_to=self.reply_queue.name,
            type=kind,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self.exchange.publish(
                message,
                routing_key=str(partition_for(session, self.env.partitions)),
                mandatory=True,
            )
            return await future
        finally:
            self.pending.pop(cid, None)


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job through raw aio-pika."""
    async with RawClient(env) as client:

        async def echo() -> bytes:
            return await client.call(ECHO_TEXT.encode(), uuid.uuid4().hex)

        async def stamp(session: int, seq: int) -> int:
            return int(await client.call(str(seq).encode(), f"s{session}", kind="stamp"))

        if job == "ready":
            return await ready_job(echo, attempt_timeout=params.get("attempt_timeout", 2.0))
        if job == "latency":
            return await latency_job(echo, params["calls"])
        if job == "pipelined":
            return await pipelined_job(echo, params["requests"], params["inflight"])
        if job == "ordered":
            return await ordered_job(
                stamp, params["sessions"], params["events"], params["inflight"]
            )
    raise ValueError(f"raw aio-pika has no job {job!r}")


if __name__ == "__main__":
    asyncio.run(serve(BenchEnv.from_environ(), int(sys.argv[1]), int(sys.argv[2])))
