"""`submit`, `call` and `stream` take the same options and refuse one they do not know."""

from __future__ import annotations

import pytest

from agentqueue import Client
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import REQUESTS, Topology
from agentqueue.protocol import new_id

OPTIONS = "session_id, agent, timeout, user_id, on_busy, delay, not_before"


async def test_a_misspelt_request_option_is_refused_by_name_and_nothing_is_published() -> None:
    topology = Topology(namespace=f"opt{new_id()[:6]}", partitions=1, tool_partitions=1)
    async with (
        MemoryBroker(f"memory://opt-{new_id()[:8]}") as broker,
        Client(broker, topology=topology) as client,
    ):
        for run in (client.submit, client.call):
            with pytest.raises(TypeError) as refused:
                await run("hello", sesion_id="s1")  # type: ignore[call-arg]
            assert str(refused.value) == f"unknown request option(s) sesion_id: use {OPTIONS}"
        with pytest.raises(TypeError) as refused:
            async for _ in client.stream("hello", agnt="a", sesion_id="s1"):  # type: ignore[call-arg]
                pass
        assert str(refused.value) == f"unknown request option(s) agnt, sesion_id: use {OPTIONS}"
        assert client.router.waiting == 0
        for queue in topology.queues(REQUESTS):
            assert (await broker.stats(queue)).ready == 0
