"""A partition-count mismatch is refused at once, and `status` shows messages no one consumes."""

from __future__ import annotations

import anyio
import pytest

from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.cli import main
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


def declare(url: str, topology: Topology, publish_to: list[str] = ()) -> None:  # type: ignore[assignment]
    async def go() -> None:
        async with open_broker(url) as broker:
            await broker.declare(topology)
            for queue in publish_to:
                await broker.publish(queue, b"waiting for a worker")

    anyio.run(go)


def test_a_call_with_more_partitions_than_the_namespace_is_refused_before_publishing(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"pm{new_id()[:6]}"
    declare(rabbitmq_url, Topology(namespace=ns, partitions=16, tool_partitions=16))
    argv = ["call", "hello", "--broker", rabbitmq_url, "--namespace", ns]
    # Refused at start: were it published, this call would wait out its 20 s and time out.
    assert main([*argv, "--partition-count", "32", "--timeout", "20"]) == 1
    assert capsys.readouterr().err == (
        f"agentqueue call: namespace {ns!r} has 16 requests partitions on this broker (queues"
        f" {ns}-requests-0 … {ns}-requests-15 exist), but this process was given 32: its"
        " requests would go to partitions no worker serves. Start it with --partition-count"
        " (AGENTQUEUE_PARTITIONS) = 16, or drain and delete the namespace's queues to change"
        " the count\n"
    )


def test_status_names_the_real_count_and_the_queues_that_hold_messages_with_no_consumer(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"pm{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=4, tool_partitions=2)
    declare(rabbitmq_url, topology, [topology.queue("requests", 3), topology.queue("requests", 3)])
    argv = ["status", "--broker", rabbitmq_url, "--namespace", ns, "--tool-partition-count", "2"]
    assert main([*argv, "--partition-count", "8"]) == 0
    out = capsys.readouterr().out
    assert "(requests: the namespace has 4 partitions, not 8 as given; showing its 4)" in out
    assert f"{ns}-requests-3 " in out and f"{ns}-requests-4 " not in out
    assert (
        f"STUCK: 1 queue(s) hold messages and have no consumer: {ns}-requests-3 (2 ready)\n"
        "  start a worker that serves them (`agentqueue worker`, default: all partitions)"
    ) in out
