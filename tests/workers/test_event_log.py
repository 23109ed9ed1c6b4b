"""A worker logs one INFO line per handled event, and the traceback of a failure."""

from __future__ import annotations

import re

import anyio
import pytest

from agentqueue import App, Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.weather import app as weather_app
from tests.config import worker_settings

LINE = re.compile(r"^event (\S+) session (\S+) (\S+) (.+) (\d+) ms$")


async def run_one(app: App, text: str, agent: str, caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    ns = f"el{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
    caplog.set_level("INFO", logger="agentqueue.worker")
    async with (
        open_broker(f"memory://event-log-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://event-log-{new_id()[:8]}"),
            worker_settings(topology, max_attempts=2, retry_base_delay=0.01),
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            with anyio.fail_after(60):
                handle = await client.submit(text, session_id="s-log", agent=agent)
                result = await handle.result()
        worker.stop()
    lines = [LINE.match(r.getMessage()) for r in caplog.records if r.name == "agentqueue.worker"]
    return handle, result, [m.groups()[:4] for m in lines if m]


async def test_each_handled_event_is_one_info_line_with_id_session_kind_and_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handle, result, lines = await run_one(
        weather_app, "What's the weather in Paris?", "weather", caplog
    )
    assert result.kind == "final"
    assert lines == [
        (f"{handle.id}:1", "s-log", "tool_call", "ok"),
        (handle.id, "s-log", "agent_request", "final"),
    ]


broken_app = App("broken")


@broken_app.agent("broken")
def broken_agent(ctx):  # type: ignore[no-untyped-def]
    raise RuntimeError("this agent cannot be built")


async def test_a_failed_event_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handle, result, lines = await run_one(broken_app, "hello", "broken", caplog)
    assert result.kind == "failed"
    reason = "failed after 2 attempts: RuntimeError: this agent cannot be built"
    assert lines == [(handle.id, "s-log", "agent_request", f"dead-lettered ({reason})")]
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert [r.levelname for r in failures] == ["WARNING", "ERROR"]
    assert 'raise RuntimeError("this agent cannot be built")' in caplog.text
