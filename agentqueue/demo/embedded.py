"""`agentqueue demo`: the whole trip in one process: broker, two workers, three conversations."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
from dataclasses import dataclass
from typing import TextIO

import anyio

from agentqueue.client import Client
from agentqueue.errors import RequestError
from agentqueue.protocol.ids import new_id
from agentqueue.settings import Settings
from agentqueue.telemetry.trace_file import SpanCollector, collect_spans
from agentqueue.telemetry.trace_view import render_waterfall
from agentqueue.workers.app import App
from agentqueue.workers.session_store import open_store
from agentqueue.workers.worker import Worker

CONVERSATIONS: list[tuple[str, list[str]]] = [
    ("ada", ["My name is Ada.", "What is my name?"]),
    ("bo", ["Remember that my favourite colour is green.", "What's my favourite colour?"]),
    ("cy", ["I live in Lisbon.", "What's the weather where I live?"]),
]


@dataclass
class DemoReport:
    """What the demo counted; `lost` is turns that never got a final reply."""

    sessions: int
    turns: int
    replies: int
    lost: int

    def summary(self) -> str:
        return (
            f"demo: {self.sessions} sessions, {self.turns} turns,"
            f" {self.replies} replies, {self.lost} lost"
        )


async def run_demo(
    app: App,
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    conversations: list[tuple[str, list[str]]] | None = None,
) -> DemoReport:
    """Run the conversations (default: 3 sessions x 2 turns) through two workers, print them."""
    conversations = CONVERSATIONS if conversations is None else conversations
    topology = settings.topology
    half = topology.partitions // 2
    store_dir = tempfile.TemporaryDirectory(prefix="agentqueue-demo-")
    store_url = (
        settings.store
        if settings.broker != "memory://"
        else f"sqlite:///{store_dir.name}/sessions.db"
    )
    broker_url = (
        settings.broker if settings.broker != "memory://" else f"memory://demo-{new_id()[:8]}"
    )
    stores = [open_store(store_url), open_store(store_url)]
    spans = collect_spans("agentqueue-demo")  # before the workers: they trace if a provider is set
    # AgentScope takes seconds to import; done up front so the trace shows the request, not that.
    await anyio.to_thread.run_sync(importlib.import_module, "agentscope.agent")
    async with settings.open_broker(broker_url) as broker, anyio.create_task_group() as tg:
        # Two workers split the partitions between them (so no balancing); each serves agents
        # and tools.
        split = dataclasses.replace(settings, balance=False)
        workers = [
            Worker(
                app,
                broker,
                stores[0],
                split,
                partitions=range(0, half),
                tool_partitions=range(0, topology.tool_partitions // 2),
                worker_id="worker-a",
            ),
            Worker(
                app,
                broker,
                stores[1],
                split,
                partitions=range(half, topology.partitions),
                tool_partitions=range(topology.tool_partitions // 2, topology.tool_partitions),
                worker_id="worker-b",
            ),
        ]
        for worker in workers:
            await tg.start(worker.run)
        async with Client(broker, topology=topology, default_timeout=settings.timeout) as client:
            replies, lost = await converse_all(
                client, out, conversations, end_sessions=bool(app.sandbox_sets)
            )
        for worker in workers:
            worker.stop()
    for store in stores:
        await store.close()
    store_dir.cleanup()
    print_tool_trace(spans, out)
    turns = sum(len(t) for _, t in conversations)
    return DemoReport(len(conversations), turns, replies, lost)


async def run_sandbox_demo(settings: Settings, *, out: TextIO = sys.stdout) -> DemoReport:
    """The data analyst (examples/analyst.py): one session, turn 2 uses turn 1's variables."""
    analyst = importlib.import_module("examples.analyst")
    return await run_demo(analyst.app, settings, out=out, conversations=[("ana", analyst.TURNS)])


async def converse_all(
    client: Client,
    out: TextIO = sys.stdout,
    conversations: list[tuple[str, list[str]]] | None = None,
    end_sessions: bool = False,
) -> tuple[int, int]:
    """Hold the conversations side by side, print each exchange; returns (replies, lost).

    With `end_sessions` (an app with sandboxes) each session is ended afterwards
    (`client.end_session`), so its workspace does not outlive the demo.
    """
    conversations = CONVERSATIONS if conversations is None else conversations
    transcripts: dict[str, list[tuple[str, str, str]]] = {}
    replies = lost = 0

    async def converse(name: str, turns: list[str]) -> None:
        nonlocal replies, lost
        session = f"{name}-{new_id()[:6]}"
        lines = transcripts.setdefault(name, [])
        for text in turns:
            try:
                result = await client.call(text, session_id=session)
            except RequestError as exc:
                lost += 1
                lines.append((text, f"[{type(exc).__name__}] {exc}", "-"))
                continue
            replies += 1
            lines.append((text, result.text, result.worker or "?"))
        if end_sessions:
            await client.end_session(session)

    async with anyio.create_task_group() as group:
        for name, turns in conversations:
            group.start_soon(converse, name, turns)
    for name, _ in conversations:
        print(f"── session {name} " + "─" * (60 - len(name)), file=out)
        for said, answer, worker in transcripts[name]:
            print(f"  you    › {said}", file=out)
            print(f"  agent  › {answer}    ({worker})", file=out)
    return replies, lost


def print_tool_trace(spans: SpanCollector, out: TextIO = sys.stdout) -> None:
    """Print the waterfall of the first request whose agent called a tool, then stop collecting."""
    records = spans.records()
    spans.stop()
    tool_traces = [r["trace_id"] for r in records if r["name"].startswith("execute_tool ")]
    if not tool_traces:
        return  # telemetry is disabled (OTEL_SDK_DISABLED) or no agent called a tool
    print(f"── trace of a request that called a tool {'─' * 49}", file=out)
    for line in render_waterfall(records, tool_traces[0]):
        print(line, file=out)
