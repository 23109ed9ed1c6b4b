"""`agentqueue demo`: the whole trip in one process: broker, two workers, three conversations."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass

import anyio

from agentqueue.broker.urls import open_broker
from agentqueue.client import Client
from agentqueue.errors import RequestError
from agentqueue.protocol.ids import new_id
from agentqueue.settings import Settings
from agentqueue.workers.app import App
from agentqueue.workers.session_store import open_store
from agentqueue.workers.worker import Worker

CONVERSATIONS: list[tuple[str, list[str]]] = [
    ("ada", ["My name is Ada.", "What is my name?"]),
    ("bo", ["Remember that my favourite colour is green.", "What's my favourite colour?"]),
    ("cy", ["What's the weather in Paris?", "What did I tell you?"]),
]


@dataclass
class DemoReport:
    """What the demo counted; `lost` is turns that never got a final reply."""

    sessions: int
    turns: int
    replies: int
    lost: int

    def summary(self) -> str:
        return f"demo: {self.sessions} sessions, {self.turns} turns, {self.replies} replies, {self.lost} lost"


async def run_demo(app: App, settings: Settings, *, out=sys.stdout) -> DemoReport:  # type: ignore[no-untyped-def]
    """Run 3 sessions x 2 turns through two workers and print each exchange."""
    topology = settings.topology
    half = topology.partitions // 2
    store_dir = tempfile.TemporaryDirectory(prefix="agentqueue-demo-")
    store_url = settings.store if settings.broker != "memory://" else f"sqlite:///{store_dir.name}/sessions.db"
    broker_url = settings.broker if settings.broker != "memory://" else f"memory://demo-{new_id()[:8]}"
    stores = [open_store(store_url), open_store(store_url)]
    replies = 0
    lost = 0
    async with open_broker(broker_url) as broker, anyio.create_task_group() as tg:
        # Two workers split the partitions; each serves agents and tools.
        workers = [
            Worker(app, broker, stores[0], topology=topology, partitions=range(0, half),
                   tool_partitions=range(0, topology.tool_partitions // 2), worker_id="worker-a"),
            Worker(app, broker, stores[1], topology=topology, partitions=range(half, topology.partitions),
                   tool_partitions=range(topology.tool_partitions // 2, topology.tool_partitions),
                   worker_id="worker-b"),
        ]
        for worker in workers:
            await tg.start(worker.run)
        async with Client(broker, topology=topology, default_timeout=settings.timeout) as client:
            transcripts: dict[str, list[tuple[str, str, str]]] = {}

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

            async with anyio.create_task_group() as conversations:
                for name, turns in CONVERSATIONS:
                    conversations.start_soon(converse, name, turns)
            for name, _ in CONVERSATIONS:
                print(f"── session {name} " + "─" * (60 - len(name)), file=out)
                for said, answer, worker in transcripts[name]:
                    print(f"  you    › {said}", file=out)
                    print(f"  agent  › {answer}    ({worker})", file=out)
        for worker in workers:
            worker.stop()
    for store in stores:
        await store.close()
    store_dir.cleanup()
    turns = sum(len(t) for _, t in CONVERSATIONS)
    return DemoReport(len(CONVERSATIONS), turns, replies, lost)
