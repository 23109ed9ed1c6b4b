"""`status` and `dlq` only look: a namespace with no queues is named, never created."""

from __future__ import annotations

import anyio
import pytest

from agentqueue.broker.errors import QueueMissing
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker, redact_url
from agentqueue.cli import main
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


async def exists(url: str, queue: str) -> bool:
    async with open_broker(url) as broker:
        try:
            await broker.stats(queue)
        except QueueMissing:
            return False
        return True


@pytest.mark.parametrize("argv", [["status"], ["dlq", "list"]])
def test_a_namespace_without_queues_is_named_and_not_created(
    argv: list[str], rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"typo{new_id()[:6]}"
    assert main([*argv, "--broker", rabbitmq_url, "--namespace", ns]) == 1
    assert capsys.readouterr().err == (
        f"agentqueue {' '.join(argv)}: no queues for namespace {ns!r} on"
        f" {redact_url(rabbitmq_url)}; check --namespace (AGENTQUEUE_NAMESPACE), or start a"
        " worker, which declares them\n"
    )
    topology = Topology(namespace=ns)
    assert not anyio.run(exists, rabbitmq_url, topology.dead_letter_queue)
    assert not anyio.run(exists, rabbitmq_url, topology.queues("requests")[0])


def test_status_of_a_declared_namespace_lists_its_queues(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"st{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)

    async def declare() -> None:
        async with open_broker(rabbitmq_url) as broker:
            await broker.declare(topology)

    anyio.run(declare)
    assert (
        main(
            [
                "status",
                "--broker",
                rabbitmq_url,
                "--namespace",
                ns,
                "--partition-count",
                "2",
                "--tool-partition-count",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{topology.queues('requests')[0]} " in out
    assert f"dead letters in {topology.dead_letter_queue}: 0" in out
