"""A delayed request starts no earlier than asked, outside its session's order until then."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.abc
import pytest

from agentqueue import Client
from agentqueue.broker.base import Broker
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import AgentRequest, Envelope, encode, new_id, user_message
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.assembly import assemble_pipeline
from agentqueue.workers.delayed import timer_key
from agentqueue.workers.pipeline import Event
from agentqueue.workers.session_store import open_store
from agentqueue.workers.timers import open_timer_store
from tests.apps.ticks import app, serving, started_at
from tests.config import worker_settings

ADA = "Nice to meet you, Ada. I'll remember that."
TOLD_ADA = "You told me: your name is Ada."


async def check_delay_keeps_order(broker: Broker, store_url: str, topology: Topology) -> None:
    async with serving(broker, store_url, topology), Client(broker, topology=topology) as client:
        session = f"d-{new_id()[:6]}"
        # Submitted first, due later: it must not hold up the turn due now.
        later = await client.submit(
            "What did I tell you?", session_id=session, delay=1.5, timeout=30
        )
        due = later.envelope.not_before
        assert due is not None
        now = await client.call("My name is Ada.", session_id=session, timeout=30)
        assert now.text == ADA
        with anyio.fail_after(30):
            final = await later.final()
        assert final.text == TOLD_ADA  # it joined the session's order when due, after Ada
        # Submitted first, yet started second: the delayed one did not hold up the session.
        assert started_at(now.request_id)[0] < started_at(later.id)[0]
        assert started_at(later.id)[0] >= due and len(started_at(later.id)) == 1


async def test_a_delayed_request_on_the_embedded_broker_waits_without_holding_up_its_session() -> (
    None
):
    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with MemoryBroker(f"memory://{new_id()[:8]}") as broker:
        await check_delay_keeps_order(broker, f"memory://{new_id()[:8]}", topology)


@pytest.mark.broker
async def test_a_delayed_request_over_rabbitmq_waits_in_a_store_timer_and_keeps_order(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with Client(rabbitmq_url, topology=topology) as probe:
        await check_delay_keeps_order(probe.broker, f"sqlite:///{tmp_path}/s.db", topology)


async def test_not_before_takes_an_aware_datetime_and_refuses_a_naive_one() -> None:
    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=2, tool_partitions=2)
    store_url = f"memory://{new_id()[:8]}"
    async with MemoryBroker(f"memory://{new_id()[:8]}") as broker:
        async with Client(broker, topology=topology) as client:
            naive = datetime(2030, 1, 1, 9, 0)
            with pytest.raises(ValueError) as refused:
                await client.submit("hi", session_id="s", not_before=naive)
            assert str(refused.value) == (
                "not_before 2030-01-01T09:00:00 has no time zone; give an aware datetime"
                " (e.g. datetime.now(UTC) + timedelta(hours=1))"
            )
            with pytest.raises(ValueError, match="give a request delay or not_before, not both"):
                await client.submit("hi", session_id="s", delay=1, not_before=naive)
            far = datetime.now(UTC) + timedelta(days=30)
            handle = await client.submit("hi", session_id="s", not_before=far, timeout=60)
            assert handle.envelope.not_before == far.timestamp()
            assert handle.envelope.deadline == far.timestamp() + 60  # counts from when it is due
        async with serving(broker, store_url, topology) as worker:
            timers = open_timer_store(store_url, topology.namespace)
            with anyio.fail_after(10):
                while await timers.get(timer_key(handle.id)) is None:
                    await anyio.sleep(0.02)
            parked = await timers.get(timer_key(handle.id))
            assert parked is not None and parked.due == far.timestamp()
            assert started_at(handle.id) == [] and worker.handled == 0


async def test_a_parked_signed_request_runs_when_due_and_is_not_refused_as_a_replay() -> None:
    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with MemoryBroker(f"memory://{new_id()[:8]}") as broker:
        broker.signing = KeyRing([("k1", b"a-shared-signing-key-0001")])
        async with (
            serving(broker, f"memory://{new_id()[:8]}", topology) as worker,
            Client(broker, topology=topology) as client,
        ):
            handle = await client.submit("My name is Ada.", session_id="sig", delay=0.5)
            with anyio.fail_after(30):
                final = await handle.final()
        assert final.text == ADA and worker.dead_lettered == 0


class _Unsettled:
    """A settler for events the receive chain decides about without settling."""

    async def ack(self) -> None:
        raise AssertionError("not expected")

    async def hand_back(self) -> None:
        raise AssertionError("not expected")

    async def dead_letter(self, reason: str, envelope_id: str | None, session_id: str | None):  # type: ignore[no-untyped-def]
        raise AssertionError("not expected")


async def test_a_consumer_without_timers_on_a_broker_that_cannot_delay_refuses_with_the_fix() -> (
    None
):
    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with MemoryBroker(f"memory://{new_id()[:8]}") as broker:
        pipeline = assemble_pipeline(
            app, broker, open_store("memory://"), {}, worker_settings(topology), worker_id="w"
        )
        envelope = Envelope(
            id="r1",
            session_id="s",
            body=AgentRequest(input=[user_message("hi")]),
            created_at=time.time(),
            not_before=time.time() + 60,
        )
        event = Event(encode(envelope), _Unsettled())
        await pipeline.receive(event)
    assert event.refusal is not None and event.refusal.field == "$.not_before"
    assert event.refusal.reason == (
        "request r1 is due in 60 s, but this consumer has no timers to hold it and MemoryBroker"
        " cannot delay messages; serve it with `agentqueue worker`, which keeps delayed requests"
        " in its session store"
    )
