"""A tool result sent while the agent worker is cut off from RabbitMQ still reaches its turn.

The agent worker's replies queue is exclusive: it dies with the worker's connection, and a tool
result published while the worker is away has nowhere to go. The tool worker waits a while
for the queue to come back, then gives up (the result is kept in its store); the agent worker,
once reconnected, asks again with the same call id and gets the stored result. Before, the
turn waited out the tool's timeout and answered with a failed tool call.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from agentqueue import App, Client
from agentqueue.broker.rabbitmq import RabbitMQBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.pipeline.pipeline import REPLY_GRACE
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.proxies import ThreadedProxy, port_of

pytestmark = [pytest.mark.slow, pytest.mark.broker]


async def test_a_tool_result_sent_while_the_agent_worker_was_cut_off_reaches_the_turn(
    rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentqueue.worker")
    runs: list[str] = []
    started = anyio.Event()
    app = App("cut-off")

    @app.tool("slow_note", timeout=120)
    async def slow_note(text: str) -> str:
        runs.append(text)
        started.set()
        await anyio.sleep(2)
        return f"noted {text}"

    @app.agent("assistant")
    def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
        return ctx.build_agent("You take notes.", tools=["slow_note"])

    topology = Topology(namespace=f"cut{new_id()[:6]}", partitions=1, tool_partitions=1)
    store = f"memory://cut-{new_id()[:8]}"
    proxy = ThreadedProxy(port_of(rabbitmq_url))
    try:
        async with (
            RabbitMQBroker(proxy.url(rabbitmq_url)) as agent_side,
            RabbitMQBroker(rabbitmq_url) as tool_side,
            anyio.create_task_group() as tg,
        ):
            for broker, role in ((agent_side, "agents"), (tool_side, "tools")):
                worker = Worker(
                    app, broker, MemorySessionStore(store), worker_settings(topology), role=role
                )
                await tg.start(worker.run)
            async with Client(rabbitmq_url, topology=topology) as client:
                answer: list[str] = []

                async def call() -> None:
                    result = await client.call(
                        '/tool slow_note {"text": "x"}', session_id="s1", timeout=120
                    )
                    answer.append(result.text or "")

                async with anyio.create_task_group() as calls:
                    calls.start_soon(call)
                    with anyio.fail_after(30):
                        await started.wait()
                    # The agent worker loses its connection and cannot get back until the tool
                    # worker has given up waiting for the agent's replies queue.
                    proxy.refuse(True)
                    assert proxy.cut() >= 1
                    with anyio.fail_after(2 + REPLY_GRACE + 20):
                        while not any("no one to answer" in r.message for r in caplog.records):
                            await anyio.sleep(0.1)
                    proxy.refuse(False)
            tg.cancel_scope.cancel()
    finally:
        proxy.close()
    assert runs == ["x"]  # asked again, answered from the tool worker's store
    assert "noted x" in answer[0] and "failed" not in answer[0]
