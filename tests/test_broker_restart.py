"""A RabbitMQ restart under load: calls finish after reconnect or fail clearly; none hangs."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentqueue import AgentQueueError, Client
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.protocol import new_id
from tests.processes import workers
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]


async def test_calls_across_a_broker_restart_complete_or_fail_clearly_and_none_is_answered_twice(
    tmp_path: Path,
) -> None:
    node = LocalRabbitMQ(tmp_path / "rabbit").start()  # its own node: the shared one stays up
    try:
        ns = f"rs{new_id()[:6]}"
        topology = Topology(namespace=ns, partitions=4, tool_partitions=4)
        args = (
            "--app",
            "tests.apps.steps:app",
            "--broker",
            node.url,
            "--store",
            f"sqlite:///{tmp_path}/s.db",
            "--namespace",
            ns,
            "--partition-count",
            "4",
            "--tool-partition-count",
            "4",
        )
        outcomes: dict[str, list[str]] = {"ok": [], "error": []}
        after_restart: list[str] = []  # calls answered once the node was back
        restarted = False
        with workers(args, env={"AGENTQUEUE_TEST_LOG": str(tmp_path / "steps.log")}):
            async with Client(node.url, topology=topology) as client:
                confirmed = [
                    await client.call_tool(
                        "step", {"session": "before", "seq": i}, session_id="before", timeout=30
                    )
                    for i in range(5)
                ]

                async def keep_calling(session: str) -> None:
                    for seq in range(8):
                        try:
                            out = await client.call_tool(
                                "step",
                                {"session": session, "seq": seq, "pause": 0.05},
                                session_id=session,
                                timeout=15,
                            )
                            outcomes["ok"].append(out)
                            if restarted:
                                after_restart.append(out)
                        except (
                            AgentQueueError
                        ) as exc:  # a clear, typed error: connection or timeout
                            outcomes["error"].append(f"{type(exc).__name__}: {exc}")
                        except (ConnectionError, OSError) as exc:
                            outcomes["error"].append(f"{type(exc).__name__}: {exc}")
                        await anyio.sleep(0.1)  # a client calling at a steady pace

                with anyio.fail_after(
                    200
                ):  # nothing may hang: every call ends one way or the other
                    async with anyio.create_task_group() as tg:
                        for i in range(4):
                            tg.start_soon(keep_calling, f"during-{i}")
                        # Restarted under load: once calls are being answered.
                        await wait_for(lambda: bool(outcomes["ok"]), 60, "a call answered")
                        await anyio.to_thread.run_sync(node.restart)
                        restarted = True
    finally:
        node.stop()
    assert len(confirmed) == 5
    assert len(outcomes["ok"]) + len(outcomes["error"]) == 32
    assert len(outcomes["ok"]) == len(set(outcomes["ok"]))  # no call answered twice
    assert after_restart, "no call completed after the broker came back"
