"""A worker started before its RabbitMQ waits for it, with backoff, and then serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import redact_url
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.protocol import new_id
from tests.processes import WorkerProcess, worker_args

pytestmark = pytest.mark.broker


def _wait_for(condition: object, what: str, worker: WorkerProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}:\n" + "\n".join(worker.lines[-30:]))
        time.sleep(0.05)


async def test_a_worker_started_before_its_broker_waits_for_it_and_then_answers(
    tmp_path: Path,
) -> None:
    node = LocalRabbitMQ(tmp_path / "rabbit")  # not started yet
    ns = f"wb{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=1, tool_partitions=1)
    args = worker_args(
        "tests.apps.steps:app", node.url, ns, f"sqlite:///{tmp_path}/s.db", partitions=1
    )
    worker = WorkerProcess(*args, env={"AGENTQUEUE_TEST_LOG": str(tmp_path / "steps.log")})
    try:
        _wait_for(
            lambda: len([line for line in worker.lines if "trying again in" in line]) >= 2,
            "the worker did not retry",
            worker,
        )
        assert worker.proc.poll() is None  # still waiting, not exited
        node.start()
        worker.wait_serving()
        async with Client(node.url, topology=topology) as client:
            result = await client.call_tool(
                "step", {"session": "s", "seq": 1}, session_id="s", timeout=30
            )
        assert result.startswith("s:1:")  # the step tool answers with its pid
        retries = [line for line in worker.lines if "trying again in" in line]
        assert f"cannot connect to RabbitMQ at {redact_url(node.url)}" in retries[0]
        assert "trying again in 0.5 s" in retries[0] and "trying again in 1.0 s" in retries[1]
        assert not [line for line in worker.lines if "Traceback" in line]
    finally:
        worker.kill()
        node.stop()
