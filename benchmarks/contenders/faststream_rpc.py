"""FastStream's RabbitBroker, RPC as its docs show it.

The worker is `@broker.subscriber(queue)` whose return value FastStream publishes to the
request's `reply_to`. One call at a time uses `broker.request()` (Direct Reply-To); that API
holds a lock for the whole round trip, so it allows one call in flight per broker. Jobs with
calls in flight therefore publish with a manual `reply_to` (a client subscriber on an exclusive
queue, matched by correlation id), the pattern FastStream's docs give for that.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

from benchmarks.contenders.common import (
    ECHO_TEXT,
    PYTHON,
    BenchEnv,
    latency_job,
    ordered_job,
    pipelined_job,
    ready_job,
)

NAME = "FastStream"
CONFIG = (
    "RabbitBroker defaults (classic queue, confirms), subscriber returns the reply; "
    "`broker.request()` for one-at-a-time (one call in flight per broker: it locks), manual "
    "reply_to + correlation ids when pipelined; `faststream run` 1 process"
)

_namespace = os.environ.get("BENCH_NAMESPACE", "bench")
ECHO_QUEUE = f"{_namespace}-fs-echo"
STAMP_QUEUE = f"{_namespace}-fs-stamp"
broker = RabbitBroker(
    os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1/"), log_level=30
)
app = FastStream(broker)


@broker.subscriber(ECHO_QUEUE)
async def echo(body: str) -> str:
    """Return the text unchanged."""
    return body


@broker.subscriber(STAMP_QUEUE)
async def stamp(body: dict[str, int]) -> int:
    """When this event started running here (a clock all local processes share)."""
    return time.monotonic_ns()


def worker_commands(env: BenchEnv, workers: int) -> list[list[str]]:
    """`faststream run` processes."""
    return [
        [
            PYTHON,
            "-m",
            "faststream",
            "run",
            "benchmarks.contenders.faststream_rpc:app",
            "--log-level",
            "warning",
        ]
        for _ in range(workers)
    ]


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job through FastStream."""
    client = RabbitBroker(env.amqp_url, log_level=30)
    pending: dict[str, asyncio.Future[Any]] = {}
    reply_queue = RabbitQueue(
        f"{env.namespace}-fs-reply-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
    )

    @client.subscriber(reply_queue)
    async def on_reply(body: Any, message: RabbitMessage) -> None:
        future = pending.pop(message.correlation_id, None)
        if future is not None and not future.done():
            future.set_result(body)

    async def publish(body: Any, queue: str) -> Any:
        cid = uuid.uuid4().hex
        future = pending[cid] = asyncio.get_running_loop().create_future()
        try:
            await client.publish(body, queue=queue, reply_to=reply_queue.name, correlation_id=cid)
            return await future
        finally:
            pending.pop(cid, None)

    async def request_echo() -> Any:
        reply = await client.request(ECHO_TEXT, queue=ECHO_QUEUE, timeout=30)
        return await reply.decode()

    async def manual_echo() -> Any:
        return await publish(ECHO_TEXT, ECHO_QUEUE)

    async def manual_stamp(session: int, seq: int) -> int:
        return int(await publish({"session": session, "seq": seq}, STAMP_QUEUE))

    async with client:
        await client.start()
        if job == "ready":
            return await ready_job(request_echo)
        if job == "latency":
            return await latency_job(request_echo, params["calls"])
        if job == "pipelined":
            return await pipelined_job(manual_echo, params["requests"], params["inflight"])
        if job == "ordered":
            return await ordered_job(
                manual_stamp, params["sessions"], params["events"], params["inflight"]
            )
    raise ValueError(f"FastStream has no job {job!r}")
