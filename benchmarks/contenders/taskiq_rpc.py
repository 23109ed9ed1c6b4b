"""Taskiq with the taskiq-aio-pika broker and a Redis result backend.

taskiq-aio-pika defaults: one durable quorum queue, qos 10, publisher confirms. Taskiq's docs
pair a broker with a result backend from taskiq-redis; that package is not in this project's
lock, so `RedisResultBackend` below does what taskiq-redis's `RedisAsyncResultBackend` does
(SET with the result, EXISTS for readiness, GET to read it). The client waits with
`task.wait_result()` as the docs show, which polls every `check_interval` = 0.2 s by default.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis.asyncio as aioredis
from taskiq import AsyncResultBackend, TaskiqResult
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

from benchmarks.contenders.common import (
    ECHO_TEXT,
    PYTHON,
    READY_TIMEOUT,
    BenchEnv,
    latency_job,
    ordered_job,
    pipelined_job,
)

NAME = "Taskiq (aio-pika + Redis)"
CONFIG = (
    "taskiq-aio-pika (quorum queue, qos 10, confirms), Redis result backend like taskiq-redis's, "
    "`wait_result()` default polling every 0.2 s; `taskiq worker --workers 1`"
)
RESULT_TTL = 600


class RedisResultBackend(AsyncResultBackend[Any]):
    """Results in Redis under the task id, as taskiq-redis's RedisAsyncResultBackend keeps them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: aioredis.Redis | None = None

    async def startup(self) -> None:
        # As taskiq-redis sizes it: enough connections for every waiting caller's poll.
        self.redis = aioredis.from_url(self.url, max_connections=1024)

    async def shutdown(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def set_result(self, task_id: str, result: TaskiqResult[Any]) -> None:
        assert self.redis is not None
        await self.redis.set(task_id, result.model_dump_json(), ex=RESULT_TTL)

    async def is_result_ready(self, task_id: str) -> bool:
        assert self.redis is not None
        return bool(await self.redis.exists(task_id))

    async def get_result(self, task_id: str, with_logs: bool = False) -> TaskiqResult[Any]:
        assert self.redis is not None
        data = await self.redis.get(task_id)
        if data is None:
            raise KeyError(f"no result for task {task_id} in Redis")
        return TaskiqResult[Any].model_validate_json(data)


_namespace = os.environ.get("BENCH_NAMESPACE", "bench")
broker = AioPikaBroker(
    os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1/"),
    exchange=Exchange(name=f"{_namespace}-taskiq"),
    task_queues=[Queue(name=f"{_namespace}-taskiq")],
).with_result_backend(RedisResultBackend(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1/0")))


@broker.task(task_name="echo")
async def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@broker.task(task_name="stamp")
async def stamp(session: int, seq: int) -> int:
    """When this event started running here (a clock all local processes share)."""
    return time.monotonic_ns()


def worker_commands(env: BenchEnv, workers: int) -> list[list[str]]:
    """`taskiq worker` processes, one worker subprocess each."""
    return [
        [
            PYTHON,
            "-m",
            "taskiq",
            "worker",
            "benchmarks.contenders.taskiq_rpc:broker",
            "--workers",
            "1",
            "--log-level",
            "WARNING",
        ]
        for _ in range(workers)
    ]


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job through Taskiq."""
    await broker.startup()
    try:

        async def call_echo() -> str:
            task = await echo.kiq(ECHO_TEXT)
            return (await task.wait_result(timeout=120)).return_value

        async def call_stamp(session: int, seq: int) -> int:
            task = await stamp.kiq(session, seq)
            return (await task.wait_result(timeout=300)).return_value

        if job == "ready":
            task = await echo.kiq(ECHO_TEXT)
            await task.wait_result(timeout=READY_TIMEOUT)
            return {"first_answer_at": time.monotonic(), "failed_attempts": 0}
        if job == "latency":
            return await latency_job(call_echo, params["calls"])
        if job == "pipelined":
            return await pipelined_job(call_echo, params["requests"], params["inflight"])
        if job == "ordered":
            return await ordered_job(
                call_stamp, params["sessions"], params["events"], params["inflight"]
            )
    finally:
        await broker.shutdown()
    raise ValueError(f"Taskiq has no job {job!r}")
