"""Agent requests as events: streaming deltas, cancel, deadlines and memory across turns."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anyio
import pytest

from agentqueue import App, Client, RequestTimedOut
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

app = App("agent-events")
tool_runs: list[str] = []  # topics slow_lookup started on, in this test
tools_done: list[str] = []  # topics slow_lookup finished, in this test


@pytest.fixture(autouse=True)
def fresh_tool_runs() -> Iterator[None]:
    """Each test sees only its own tool runs (the lists are module-level, like the app)."""
    tool_runs.clear()
    tools_done.clear()
    yield
    tool_runs.clear()
    tools_done.clear()


@app.tool("slow_lookup", timeout=60)
async def slow_lookup(topic: str) -> str:
    """Look something up slowly.

    Args:
        topic: What to look up.
    """
    tool_runs.append(topic)
    await anyio.sleep(30)  # the slow tool under test: only a cancel ends it early
    tools_done.append(topic)
    return f"all about {topic}"


@app.tool("get_weather", timeout=10)
async def get_weather(city: str) -> str:
    """Get the weather in a city.

    Args:
        city: The city.
    """
    return "sunny, 21°C"


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You are helpful.")


async def serve(
    url: str, store_url: str, topology: Topology, tg: anyio.abc.TaskGroup
) -> list[Worker]:
    broker = MemoryBroker(url)
    await broker.connect()
    workers = [
        Worker(
            app, broker, MemorySessionStore(store_url), worker_settings(topology), role="agents"
        ),
        Worker(app, broker, MemorySessionStore(store_url), worker_settings(topology), role="tools"),
    ]
    for worker in workers:
        await tg.start(worker.run)
    return workers


@pytest.fixture
def names() -> tuple[str, str, Topology]:
    return (
        f"memory://ev-{new_id()[:8]}",
        f"memory://st-{new_id()[:8]}",
        Topology(namespace="ev", partitions=4, tool_partitions=4),
    )


async def test_stream_yields_deltas_in_order_then_one_final(names) -> None:  # type: ignore[no-untyped-def]
    url, store_url, topology = names
    async with anyio.create_task_group() as tg:
        await serve(url, store_url, topology, tg)
        async with Client(url, topology=topology) as client:
            events = [
                e async for e in client.stream("My name is Ada.", session_id="s1", timeout=30)
            ]
        tg.cancel_scope.cancel()
    kinds = [e.kind for e in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    deltas = [e for e in events if e.kind == "delta"]
    assert len(deltas) >= 2
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d.text for d in deltas) == events[-1].text


async def test_a_cancelled_request_answers_cancelled_and_the_next_turn_works(names) -> None:  # type: ignore[no-untyped-def]
    url, store_url, topology = names
    async with anyio.create_task_group() as tg:
        await serve(url, store_url, topology, tg)
        async with Client(url, topology=topology) as client:
            await client.call("My name is Ada.", session_id="s2", timeout=30)
            handle = await client.submit(
                '/tool slow_lookup {"topic": "queues"}', session_id="s2", timeout=120
            )
            with anyio.fail_after(10):
                while "queues" not in tool_runs:
                    await anyio.sleep(0.02)
            await handle.cancel()
            result = await handle.result()
            finished_before_the_answer = list(tools_done)
            after = await client.call("What is my name?", session_id="s2", timeout=30)
        tg.cancel_scope.cancel()
        state = json.loads(await MemorySessionStore(store_url).load_state("s2") or "{}")
    assert result.kind == "cancelled"
    # The answer did not wait for the running tool: it was still sleeping when cancelled came.
    assert finished_before_the_answer == []
    assert after.text == "Your name is Ada."
    # Memory holds complete turns only: every tool call in it has its (interrupted) result.
    context = json.dumps(state.get("context", []))
    assert context.count('"tool_call"') == context.count('"tool_result"')


async def test_a_request_past_its_deadline_times_out(names) -> None:  # type: ignore[no-untyped-def]
    url, store_url, topology = names
    async with anyio.create_task_group() as tg:
        await serve(url, store_url, topology, tg)
        async with Client(url, topology=topology) as client:
            with pytest.raises(RequestTimedOut, match="request timed out"):
                await client.call(
                    '/tool slow_lookup {"topic": "deadlines"}', session_id="s3", timeout=1.5
                )
            ok = await client.call("What's the weather in Paris?", session_id="s3", timeout=30)
        tg.cancel_scope.cancel()
    assert ok.text == "The weather in Paris: sunny, 21°C."
