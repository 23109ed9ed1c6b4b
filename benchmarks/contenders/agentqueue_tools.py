"""agentqueue: `Worker(role="tools")` processes serving `benchmarks.apps:app`, driven by
`Client.call_tool`. The tools are idempotent, so the worker skips the store's dedup record."""

from __future__ import annotations

from typing import Any

from agentqueue.broker.topology import Topology
from agentqueue.client import Client
from benchmarks.contenders.common import (
    ECHO_TEXT,
    PYTHON,
    BenchEnv,
    latency_job,
    ordered_job,
    partitions_arg,
    pipelined_job,
    ready_job,
    split_partitions,
)

NAME = "agentqueue"
CONFIG = (
    "`agentqueue worker --role tools --store memory://` (concurrency 32), Client.call_tool; "
    "16 quorum partitions, confirms, ack after confirmed reply; 2 workers split partitions"
)


def worker_commands(env: BenchEnv, workers: int) -> list[list[str]]:
    """The CLI worker, one process per worker, each serving its share of the partitions."""
    return [
        [
            PYTHON,
            "-m",
            "agentqueue.cli",
            "worker",
            "--app",
            "benchmarks.apps:app",
            "--role",
            "tools",
            "--broker",
            env.amqp_url,
            "--store",
            "memory://",
            "--namespace",
            env.namespace,
            "--partition-count",
            str(env.partitions),
            "--tool-partition-count",
            str(env.partitions),
            "--partitions",
            partitions_arg(split_partitions(env.partitions, workers, i)),
        ]
        for i in range(workers)
    ]


def topology(env: BenchEnv) -> Topology:
    """The topology the workers of `env` use."""
    return Topology(env.namespace, partitions=env.partitions, tool_partitions=env.partitions)


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one job through agentqueue's Client."""
    async with Client(env.amqp_url, topology=topology(env)) as client:

        async def echo() -> str:
            return await client.call_tool("echo", {"text": ECHO_TEXT}, timeout=60)

        async def stamp(session: int, seq: int) -> int:
            return int(
                await client.call_tool("stamp", {"seq": seq}, session_id=f"s{session}", timeout=120)
            )

        if job == "ready":
            return await ready_job(echo, attempt_timeout=params.get("attempt_timeout", 2.0))
        if job == "latency":
            return await latency_job(echo, params["calls"])
        if job == "pipelined":
            return await pipelined_job(echo, params["requests"], params["inflight"])
        if job == "spread":  # every call on a session of its own, as many sessions as calls
            calls = iter(range(params["requests"]))

            async def fresh_session() -> str:
                session = f"{params['prefix']}{next(calls)}"
                return await client.call_tool(
                    "echo", {"text": ECHO_TEXT}, session_id=session, timeout=120
                )

            return await pipelined_job(fresh_session, params["requests"], params["inflight"])
        if job == "ordered":
            return await ordered_job(
                stamp, params["sessions"], params["events"], params["inflight"]
            )
    raise ValueError(f"agentqueue has no job {job!r}")
