"""`agentqueue status` and `dlq list|show|replay` on a live broker."""

from __future__ import annotations

import io

import anyio

from agentqueue import App, Client, RequestFailed
from agentqueue.admin import dlq_list, dlq_replay, dlq_show, print_status
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings


async def test_a_dead_letter_can_be_listed_shown_and_replayed_once_its_cause_is_fixed() -> None:
    outage = {"down": True}
    app = App("flaky")

    @app.tool("lookup")
    async def lookup(key: str) -> str:
        return f"value of {key}"

    @app.agent("flaky")
    def flaky(ctx):  # type: ignore[no-untyped-def]
        if outage["down"]:
            raise RuntimeError("vector store unreachable")
        return ctx.build_agent("You help.")

    url, topology = (
        f"memory://admin-{new_id()[:8]}",
        Topology(namespace="adm", partitions=2, tool_partitions=2),
    )
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(
                topology,
                max_attempts=2,
                retry_base_delay=0.01,
                balance=True,
                heartbeat_interval=0.2,
            ),
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            handle = await client.submit("My name is Ada.", session_id="s1", timeout=30)
            try:
                await handle.final()
                raise AssertionError("the request should have failed")
            except RequestFailed as exc:
                assert str(exc) == "failed after 2 attempts: RuntimeError: vector store unreachable"

            listing = io.StringIO()
            assert await dlq_list(broker, topology, listing) == 1
            assert handle.id in listing.getvalue()
            assert (
                "failed after 2 attempts: RuntimeError: vector store unreachable"
                in listing.getvalue()
            )
            shown = io.StringIO()
            assert await dlq_show(broker, topology, handle.id, shown)
            assert '"text": "My name is Ada."' in shown.getvalue()

            status = io.StringIO()
            await print_status(broker, topology, status)
            assert "adm-requests-0" in status.getvalue() and worker.worker_id in status.getvalue()
            assert "dead letters in adm-dead-letters: 1" in status.getvalue()

            outage["down"] = False
            inbox = client.router.expect(handle.id)  # the replayed request answers the same caller
            assert await dlq_replay(broker, topology, handle.id, io.StringIO()) == 1
            with anyio.fail_after(20):
                while True:
                    reply = await inbox.get()
                    if reply.body.terminal:
                        break
            assert reply.body.kind == "final" and reply.body.text.startswith(
                "Nice to meet you, Ada"
            )
            assert await dlq_list(broker, topology, io.StringIO()) == 0
        worker.stop()


async def test_a_poison_request_on_rabbitmq_is_dead_lettered_with_its_error_and_the_caller_gets_the_text(
    rabbitmq_url: str,
) -> None:
    app = App("poison")

    @app.agent("broken")
    def broken(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("model endpoint refused the key")

    topology = Topology(namespace=f"poi{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with Client(rabbitmq_url, topology=topology) as client, anyio.create_task_group() as tg:
        worker = Worker(
            app,
            client.broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(topology, max_attempts=3, retry_base_delay=0.01),
        )
        await tg.start(worker.run)
        handle = await client.submit("hello", session_id="s1", timeout=30)
        try:
            await handle.final()
            raise AssertionError("the request should have failed")
        except RequestFailed as exc:
            assert (
                str(exc) == "failed after 3 attempts: RuntimeError: model endpoint refused the key"
            )
        listing = io.StringIO()
        assert await dlq_list(client.broker, topology, listing) == 1
        assert f"{handle.id}" in listing.getvalue()
        assert (
            "failed after 3 attempts: RuntimeError: model endpoint refused the key"
            in listing.getvalue()
        )
        worker.stop()
