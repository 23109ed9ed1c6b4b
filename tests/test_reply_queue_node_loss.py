"""A durable reply queue is a quorum queue: the node holding it can die while answers are due."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.rabbitmq_cluster import LocalRabbitMQCluster
from agentqueue.protocol import Envelope, ToolCall, ToolResult, encode, new_id
from tests.processes import worker_args, workers

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def test_every_answer_arrives_when_the_node_holding_the_reply_queue_is_killed(
    tmp_path: Path,
) -> None:
    ns = f"rn{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=1, tool_partitions=1)
    store = f"sqlite:///{tmp_path}/s.db"
    with LocalRabbitMQCluster(tmp_path / "cluster", nodes=3) as cluster:
        first, second, third = cluster.urls
        # The worker meets node 1 first; the client declares its reply queue through node 0,
        # where the queue's leader then lives.
        args = worker_args(
            "tests.apps.steps:app", f"{second},{third},{first}", ns, store, partitions=1
        )
        with workers(args, env={"AGENTQUEUE_TEST_LOG": str(tmp_path / "steps.log")}):
            client = Client(
                f"{first},{second},{third}",
                topology=topology,
                reply_queue=topology.reply_queue("durable-client"),
                durable_replies=True,
            )
            async with client:
                inboxes = {}
                for n in range(6):
                    call = new_id()
                    envelope = Envelope(
                        id=call,
                        session_id=f"s{n}",
                        correlation_id=call,
                        reply_to=client.reply_queue,
                        body=ToolCall(
                            name="step",
                            arguments={"session": f"s{n}", "seq": 1, "pause": 3.0},
                            call_id=call,
                        ),
                        created_at=time.time(),
                    )
                    inboxes[f"s{n}"] = client.router.expect(call)
                    await client.broker.publish(topology.route(envelope), encode(envelope))
                queue = topology.queue("tools", 0)
                with anyio.fail_after(30):  # all six taken by the worker, running
                    while (await client.broker.stats(queue)).ready:
                        await anyio.sleep(0.05)
                cluster.kill_node(0)  # SIGKILL, while the six answers are due
                answers = {}
                with anyio.fail_after(90):
                    for session, inbox in inboxes.items():
                        answers[session] = (await inbox.get()).body
    assert sorted(answers) == [f"s{n}" for n in range(6)]
    assert all(isinstance(a, ToolResult) and a.ok for a in answers.values())
    assert all(answers[f"s{n}"].output.startswith(f"s{n}:1:") for n in range(6))  # type: ignore[union-attr]
