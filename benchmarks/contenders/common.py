"""What every contender shares: the job drivers, the environment a run gives it, and the stats.

A contender module defines `NAME`, `CONFIG` (one line for the table), `worker_commands(env, n)`
(the argv of each worker process) and `async run_job(env, job, params) -> dict`. The job drivers
below take the contender's `call` coroutine, so every contender is timed by the same code.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

PYTHON = sys.executable
ECHO_TEXT = "hello, agentqueue"
READY_TIMEOUT = 90.0  # seconds a client waits for the first answer of a fresh worker


@dataclass(frozen=True)
class BenchEnv:
    """Where a contender runs: the broker, a namespace of its own, and helpers' addresses."""

    amqp_url: str
    namespace: str
    redis_url: str = ""
    partitions: int = 16

    def as_environ(self) -> dict[str, str]:
        """The environment variables worker processes read this from."""
        return {
            "BENCH_AMQP_URL": self.amqp_url,
            "BENCH_NAMESPACE": self.namespace,
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_PARTITIONS": str(self.partitions),
        }

    @classmethod
    def from_environ(cls) -> BenchEnv:
        """The env a worker process was started with (see `as_environ`)."""
        return cls(
            amqp_url=os.environ["BENCH_AMQP_URL"],
            namespace=os.environ["BENCH_NAMESPACE"],
            redis_url=os.environ.get("BENCH_REDIS_URL", ""),
            partitions=int(os.environ.get("BENCH_PARTITIONS", "16")),
        )


class Contender(Protocol):
    """The interface of a `benchmarks.contenders.<name>` module."""

    NAME: str
    CONFIG: str

    def worker_commands(self, env: BenchEnv, workers: int) -> list[list[str]]: ...

    async def run_job(self, env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]: ...


def split_partitions(n: int, workers: int, index: int) -> list[int]:
    """The partitions worker `index` of `workers` serves: contiguous, near-equal shares."""
    return [p for p in range(n) if p * workers // n == index]


def partitions_arg(parts: list[int]) -> str:
    """`[0, 1, 2]` as the CLI's `0-2`."""
    return f"{parts[0]}-{parts[-1]}" if len(parts) > 1 else str(parts[0])


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def ready_job(
    call: Callable[[], Awaitable[Any]], attempt_timeout: float = 2.0
) -> dict[str, Any]:
    """Call until the first answer; report when it came (a clock all local processes share)."""
    deadline = time.monotonic() + READY_TIMEOUT
    errors = 0
    while True:
        try:
            with anyio.fail_after(attempt_timeout):
                await call()
            return {"first_answer_at": time.monotonic(), "failed_attempts": errors}
        except Exception:
            errors += 1
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.05)


async def latency_job(
    call: Callable[[], Awaitable[Any]], n: int, warmup: int = 20
) -> dict[str, Any]:
    """One call at a time; per-call latency percentiles in milliseconds."""
    for _ in range(warmup):
        await call()
    samples: list[float] = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "calls": n,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
    }


async def pipelined_job(
    call: Callable[[], Awaitable[Any]], n: int, inflight: int
) -> dict[str, Any]:
    """n calls with up to `inflight` outstanding; requests per second and the calls' latency."""
    remaining = iter(range(n))
    samples: list[float] = []

    async def lane() -> None:
        for _ in remaining:
            sent = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - sent) * 1000)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(min(inflight, n)):
            tg.start_soon(lane)
    elapsed = time.perf_counter() - start
    return {
        "requests": n,
        "inflight": inflight,
        "seconds": elapsed,
        "rps": n / elapsed,
        **loaded_latency(samples),
    }


def loaded_latency(samples: list[float]) -> dict[str, float]:
    """p50 and p99 (ms) of calls made under load, each from its publish to its answer."""
    samples.sort()
    return {"loaded_p50_ms": percentile(samples, 50), "loaded_p99_ms": percentile(samples, 99)}


def interleaved(sessions: int, events: int) -> Iterator[tuple[int, int]]:
    """(session, seq) in the order they are published: event 0 of every session, then 1, ..."""
    for seq in range(events):
        for session in range(sessions):
            yield session, seq


async def ordered_job(
    call: Callable[[int, int], Awaitable[int]], sessions: int, events: int, inflight: int
) -> dict[str, Any]:
    """Publish interleaved session events in order with `inflight` outstanding; count how many
    started in the worker before an earlier event of their session."""
    stamps: dict[int, list[tuple[int, int]]] = {s: [] for s in range(sessions)}
    window = anyio.Semaphore(inflight)
    samples: list[float] = []

    async def one(session: int, seq: int) -> None:
        try:
            sent = time.perf_counter()
            stamps[session].append((await call(session, seq), seq))
            samples.append((time.perf_counter() - sent) * 1000)
        finally:
            window.release()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for session, seq in interleaved(sessions, events):
            await window.acquire()
            # Tasks start in the order they are created, so publishes keep this order.
            tg.start_soon(one, session, seq)
    elapsed = time.perf_counter() - start
    return {
        "requests": sessions * events,
        "sessions": sessions,
        "events_per_session": events,
        "seconds": elapsed,
        "rps": sessions * events / elapsed,
        "order_violations": count_violations(stamps),
        **loaded_latency(samples),
    }


def count_violations(stamps: dict[Any, list[tuple[int, int]]]) -> int:
    """Events that started after a later event of the same session (by worker start time)."""
    violations = 0
    for events in stamps.values():
        highest = -1
        for _, seq in sorted(events):
            if seq < highest:
                violations += 1
            highest = max(highest, seq)
    return violations
