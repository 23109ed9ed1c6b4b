"""The client of one cloud_throughput job, in a process of its own:

    python -m benchmarks.cloud_client tools '{"requests": 500, "inflight": 32}'

It reads the broker, namespace and partitions from the AGENTQUEUE_* settings (`Client()`), makes
one call until it is answered (the servers are warm), prints `{"ready": true}`, waits for a line
on stdin (the parent reads the servers' CPU counters meanwhile), runs the job and prints its
result as one JSON line: answers per second, latency percentiles, its own CPU seconds and the
seconds it waited for a CPU.

Jobs: `tools`, a call of the chaos app's `apply` tool each; `agents`, an agent request each to
the chaos app's agent (offline scripted model), which makes one remote `apply` call.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from agentqueue import Client
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.partitioning import partition_for
from benchmarks.chaos_app import request_text
from benchmarks.contenders.common import percentile, ready_job
from benchmarks.harness import runqueue_seconds

CALL_TIMEOUT = 120.0  # seconds a request may take before it counts as an error
READY_ATTEMPT = {"tools": 5.0, "agents": 20.0}  # a fresh worker's first agent turn is slower


async def run_job(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Warm up, wait for the parent's go, then `requests` calls with `inflight` outstanding."""
    run = new_id()[:8]
    async with Client(default_timeout=CALL_TIMEOUT) as client:

        async def one(session: str) -> None:
            if kind == "tools":
                args = {"session": session, "seq": 0, "request": session}
                await client.call_tool("apply", args, session_id=session, timeout=CALL_TIMEOUT)
            else:
                text = request_text(session, 0, session)
                await client.call(text, session_id=session, agent="chaos", timeout=CALL_TIMEOUT)

        # One call per partition: every trigger, instance or worker partition is serving.
        first, *others = _session_per_partition(f"{kind}-{run}-warm", _partitions(client, kind))
        await ready_job(lambda: one(first), attempt_timeout=READY_ATTEMPT[kind])
        with anyio.fail_after(CALL_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for session in others:
                    tg.start_soon(one, session)
        print(json.dumps({"ready": True}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)

        samples: list[float] = []
        errors: list[str] = []
        remaining = iter(range(params["requests"]))

        async def lane() -> None:
            for i in remaining:
                start = time.perf_counter()
                try:
                    await one(f"{kind}-{run}-{i}")
                except Exception as exc:  # counted and shown in the table, the run goes on
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                samples.append((time.perf_counter() - start) * 1000)

        waited = runqueue_seconds([os.getpid()])
        cpu, start = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(min(params["inflight"], params["requests"])):
                tg.start_soon(lane)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        waited = runqueue_seconds([os.getpid()]) - waited
    samples.sort()
    return {
        "requests": params["requests"],
        "inflight": params["inflight"],
        "answered": len(samples),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": elapsed,
        "rps": len(samples) / elapsed,
        "p50_ms": percentile(samples, 50) if samples else None,
        "p99_ms": percentile(samples, 99) if samples else None,
        "mean_ms": statistics.fmean(samples) if samples else None,
        "client_cpu_s": cpu,
        "client_runqueue_s": waited,
    }


def _partitions(client: Client, kind: str) -> int:
    topology = client.topology
    return topology.tool_partitions if kind == "tools" else topology.partitions


def _session_per_partition(prefix: str, partitions: int) -> list[str]:
    """A session id for each partition, in partition order."""
    found: dict[int, str] = {}
    for i in itertools.count():
        session = f"{prefix}-{i}"
        found.setdefault(partition_for(session, partitions), session)
        if len(found) == partitions:
            return [found[p] for p in range(partitions)]
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    """Run one job and print its result."""
    kind, params = argv[0], json.loads(argv[1])
    if kind not in READY_ATTEMPT:
        raise SystemExit(f"unknown job {kind!r}; choose one of {', '.join(READY_ATTEMPT)}")
    print(json.dumps(anyio.run(run_job, kind, params)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
