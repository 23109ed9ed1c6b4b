"""Job 4: a batch of weather questions to examples/weather.py's agent (offline scripted model,
one `get_weather` tool call per request), over agentqueue and in-process as the ceiling."""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import anyio

from agentqueue.broker.topology import Topology
from agentqueue.client import Client
from benchmarks.contenders.common import (
    PYTHON,
    READY_TIMEOUT,
    BenchEnv,
    loaded_latency,
    partitions_arg,
    split_partitions,
)

QUESTION = "What's the weather in Paris?"
CONFIG = (
    "agentqueue: 2 `agentqueue worker --app examples.weather:app --role agents` (partitions "
    "split, memory store) + 1 `--role tools` worker, Client.call with a new session per request; "
    "in-process: the same agent built per request with AgentContext (tool run locally) + run_turn, "
    "same number in flight, one process."
)


def worker_commands(env: BenchEnv, agent_workers: int, store: str = "memory://") -> list[list[str]]:
    """Agent workers splitting the request partitions, and one tool worker, on `store`."""
    base = [
        PYTHON,
        "-m",
        "agentqueue.cli",
        "worker",
        "--app",
        "examples.weather:app",
        "--broker",
        env.amqp_url,
        "--store",
        store,
        "--namespace",
        env.namespace,
        "--partition-count",
        str(env.partitions),
        "--tool-partition-count",
        str(env.partitions),
    ]
    agents = [
        [
            *base,
            "--role",
            "agents",
            "--partitions",
            partitions_arg(split_partitions(env.partitions, agent_workers, i)),
        ]
        for i in range(agent_workers)
    ]
    return [*agents, [*base, "--role", "tools"]]


async def _batch(ask: Any, n: int, inflight: int) -> dict[str, Any]:
    remaining = iter(range(n))
    answers = 0
    samples: list[float] = []

    async def lane() -> None:
        nonlocal answers
        for i in remaining:
            sent = time.perf_counter()
            text = await ask(i)
            samples.append((time.perf_counter() - sent) * 1000)
            answers += "sunny" in text
        # Each answer must come from a real tool call: the scripted model quotes its result.

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(min(n, inflight)):
            tg.start_soon(lane)
    elapsed = time.perf_counter() - start
    return {
        "requests": n,
        "inflight": inflight,
        "seconds": elapsed,
        "items_per_s": n / elapsed,
        "answers_with_tool_result": answers,
        **loaded_latency(samples),
    }


async def _inprocess(n: int, inflight: int) -> dict[str, Any]:
    from agentqueue.workers.agent_context import AgentContext
    from agentqueue.workers.agent_turn import run_turn
    from examples.weather import app

    spec = app.agent_spec("weather")
    local_tools = {name: dataclasses.replace(t, remote=False) for name, t in app.tools.items()}
    message = [{"role": "user", "type": "message", "content": [{"type": "text", "text": QUESTION}]}]

    async def ask(i: int) -> str:
        agent = spec.factory(
            AgentContext(agent_name=spec.name, session_id=f"s{i}", tools=local_tools)
        )
        return (await run_turn(agent, message)).text

    return await _batch(ask, n, inflight)


async def run_job(env: BenchEnv, job: str, params: dict[str, Any]) -> dict[str, Any]:
    """`inprocess`, or over agentqueue: `ready`, `batch` and `spread`."""
    if job == "inprocess":
        return await _inprocess(params["requests"], params["inflight"])
    topology = Topology(env.namespace, partitions=env.partitions, tool_partitions=env.partitions)
    async with Client(env.amqp_url, topology=topology) as client:

        async def ask(i: int) -> str:
            return (
                await client.call(QUESTION, session_id=f"s{i}", agent="weather", timeout=300)
            ).text

        if job == "ready":
            with anyio.fail_after(READY_TIMEOUT):
                await ask(-1)
            return {"first_answer_at": time.monotonic()}
        if job == "batch":
            return await _batch(ask, params["requests"], params["inflight"])
        if job == "spread":  # requests over live sessions (see benchmarks/scale.py), at random
            picks = random.Random(params.get("seed", 1))
            live = params["sessions"]

            async def ask_live(i: int) -> str:
                session = f"{params['prefix']}{picks.randrange(live)}"
                return (
                    await client.call(QUESTION, session_id=session, agent="weather", timeout=300)
                ).text

            return await _batch(ask_live, params["requests"], params["inflight"])
    raise ValueError(f"agent batch has no job {job!r}")
