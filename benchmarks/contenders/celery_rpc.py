"""Celery 5 on RabbitMQ with the `rpc://` result backend, which Celery's docs recommend for
RPC-style results (replies come back as messages to the client, nothing is stored).

Everything else is Celery's default: one classic durable queue `celery`, persistent messages,
no publisher confirms, prefork pool with one child per CPU, prefetch multiplier 4, early ack.
The worker runs with `--without-gossip --without-mingle --without-heartbeat`, as Celery's
optimisation guide suggests. The client is synchronous: in-flight calls are a sliding window
of `AsyncResult`s whose `.get()` is called oldest first.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

from celery import Celery

from benchmarks.contenders.common import (
    ECHO_TEXT,
    PYTHON,
    READY_TIMEOUT,
    BenchEnv,
    count_violations,
    interleaved,
    percentile,
)

NAME = "Celery (rpc://)"
CONFIG = (
    "Celery 5, result backend `rpc://` (docs' choice for RPC), classic durable queue, prefork "
    "pool `-c 2`, prefetch x4, no publisher confirms (defaults); sync client, a window of "
    "AsyncResults"
)

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"),
    backend="rpc://",
)
app.conf.update(
    task_default_queue=f"{os.environ.get('BENCH_NAMESPACE', 'bench')}-celery",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="echo")
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@app.task(name="stamp")
def stamp(session: int, seq: int) -> int:
    """When this event started running here (a clock all local processes share)."""
    return time.monotonic_ns()


def worker_commands(env: BenchEnv, workers: int) -> list[list[str]]:
    """`celery worker` processes (prefork, 2 children each)."""
    return [
        [
            PYTHON,
            "-m",
            "celery",
            "-A",
            "benchmarks.contenders.celery_rpc",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"w{i}-{env.namespace}@%h",
        ]
        for i in range(workers)
    ]


def _window(sends: Any, inflight: int) -> list[Any]:
    """Send with at most `inflight` outstanding, collecting results oldest first."""
    pending: deque[Any] = deque()
    results = []
    for send in sends:
        if len(pending) >= inflight:
            results.append(pending.popleft().get(timeout=120))
        pending.append(send())
    while pending:
        results.append(pending.popleft().get(timeout=120))
    return results


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job through Celery (synchronously: Celery's client is not async)."""
    if job == "ready":
        echo.delay(ECHO_TEXT).get(timeout=READY_TIMEOUT)
        return {"first_answer_at": time.monotonic(), "failed_attempts": 0}
    if job == "latency":
        for _ in range(20):
            echo.delay(ECHO_TEXT).get(timeout=60)
        samples = []
        for _ in range(params["calls"]):
            start = time.perf_counter()
            echo.delay(ECHO_TEXT).get(timeout=60)
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        return {
            "calls": len(samples),
            "p50_ms": percentile(samples, 50),
            "p99_ms": percentile(samples, 99),
            "mean_ms": sum(samples) / len(samples),
        }
    if job == "pipelined":
        n, inflight = params["requests"], params["inflight"]
        start = time.perf_counter()
        _window((lambda: echo.delay(ECHO_TEXT) for _ in range(n)), inflight)
        elapsed = time.perf_counter() - start
        return {"requests": n, "inflight": inflight, "seconds": elapsed, "rps": n / elapsed}
    if job == "ordered":
        order = list(interleaved(params["sessions"], params["events"]))
        start = time.perf_counter()
        stamps = _window(
            ((lambda s=s, q=q: stamp.delay(s, q)) for s, q in order), params["inflight"]
        )
        elapsed = time.perf_counter() - start
        by_session: dict[int, list[tuple[int, int]]] = {}
        for (session, seq), at in zip(order, stamps, strict=True):
            by_session.setdefault(session, []).append((at, seq))
        return {
            "requests": len(order),
            "seconds": elapsed,
            "rps": len(order) / elapsed,
            "order_violations": count_violations(by_session),
        }
    raise ValueError(f"Celery has no job {job!r}")
