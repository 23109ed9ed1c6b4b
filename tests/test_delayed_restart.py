"""A delayed request starts no earlier than asked and survives a broker restart: over RabbitMQ
(parked in a timer of the SQLite store) and over MNS (held back by MNS's DelaySeconds)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.protocol import new_id
from agentqueue.workers.delayed import timer_key
from agentqueue.workers.timers import open_timer_store
from tests.apps.ticks import serving, started_at
from tests.config import worker_settings

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ADA = "Nice to meet you, Ada. I'll remember that."
DELAY = 3.0


async def test_a_delayed_request_parked_in_the_store_survives_a_rabbitmq_restart(
    tmp_path: Path,
) -> None:
    node = LocalRabbitMQ(tmp_path / "rabbit").start()  # its own node: the shared one stays up
    try:
        ns = f"dr{new_id()[:6]}"
        store = f"sqlite:///{tmp_path}/s.db"
        topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
        async with (
            worker_settings(topology).open_broker(node.url) as broker,
            serving(broker, store, topology),
        ):
            async with Client(node.url, topology=topology, durable_replies=True) as client:
                handle = await client.submit(
                    "My name is Ada.", session_id="later", delay=DELAY, timeout=120
                )
                due = handle.envelope.not_before
                assert due is not None
                timers = open_timer_store(store, ns)
                with anyio.fail_after(20):  # parked: acked by the broker, held by the store
                    while await timers.get(timer_key(handle.id)) is None:
                        await anyio.sleep(0.05)
                await timers.close()
                await anyio.to_thread.run_sync(
                    node.restart
                )  # it falls due while the broker is away
                with anyio.fail_after(90):
                    final = await handle.final()
        assert final.text == ADA
        started = started_at(handle.id)
        assert len(started) == 1 and started[0] >= due
    finally:
        node.stop()


async def test_a_delayed_request_held_back_by_mns_survives_an_mns_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalMNS(tmp_path / "mns.db").start()
    try:
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", server.access_id)
        monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", server.access_key)
        url = f"mns://{server.host}:{server.port}?wait=1"
        ns = f"dm{new_id()[:6]}"
        store = f"sqlite:///{tmp_path}/s.db"
        topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
        async with (
            worker_settings(topology).open_broker(url) as broker,
            serving(broker, store, topology),
        ):
            async with Client(url, topology=topology) as client:
                handle = await client.submit(
                    "My name is Ada.", session_id="later", delay=DELAY, timeout=120
                )
                due = handle.envelope.not_before
                assert due is not None
                queue = server.account().get_queue(topology.route(handle.envelope))
                held = queue.get_attributes()._delay_messages  # the SDK's name is deprecated
                await anyio.to_thread.run_sync(server.stop)
                await anyio.to_thread.run_sync(server.start)
                with anyio.fail_after(60):
                    final = await handle.final()
        assert held == 1  # MNS itself held it back, not a timer
        timers = open_timer_store(store, ns)
        assert await timers.list() == []
        await timers.close()
        assert final.text == ADA
        started = started_at(handle.id)
        assert len(started) == 1 and started[0] >= due
    finally:
        server.stop()
