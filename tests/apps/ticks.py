"""An app for delayed-request and schedule tests: every turn that ran and committed is logged,
with when it started, to the file named by AGENTQUEUE_TEST_LOG (or kept in `RUNS` in-process)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator

import anyio

from agentqueue import App
from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.pipeline import Event, Middleware, Next
from agentqueue.workers.session_store import open_store
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

RUNS: list[tuple[str, float, str]] = []  # (request id, started at, answer) in this process


class RunLog(Middleware):
    """Logs each turn whose handler ran and whose effect was committed (never a dedup answer)."""

    async def process(self, event: Event, call_next: Next) -> None:
        started = time.time()
        await call_next(event)
        if event.result is None or event.outcome != "ack" or event.envelope is None:
            return
        answer = event.result.body.text if hasattr(event.result.body, "text") else ""
        RUNS.append((event.envelope.id, started, answer))
        path = os.environ.get("AGENTQUEUE_TEST_LOG")
        if path:
            line = f"{event.envelope.id} {started:.3f} {os.getpid()}\n"
            # One O_APPEND write per line: lines from several processes never interleave.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


app = App("ticks", middleware=[RunLog()])


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You remember what you are told.")


@contextlib.asynccontextmanager
async def serving(
    broker: Broker, store_url: str, topology: Topology, **fields: object
) -> AsyncIterator[Worker]:
    """A worker of this app in the test's process, cancelled on the way out."""
    worker = Worker(app, broker, open_store(store_url), worker_settings(topology, **fields))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        tg.cancel_scope.cancel()


def started_at(request_id: str) -> list[float]:
    """When each committed run of `request_id` in this process started."""
    return [at for rid, at, _ in RUNS if rid == request_id]
