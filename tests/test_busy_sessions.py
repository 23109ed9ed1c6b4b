"""A second turn while the session is busy, for every `on_busy` policy: over RabbitMQ with real
worker processes, on the FC emulator, and with the worker killed during an interrupt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentqueue import Client, RequestBusy
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.topology import Topology
from agentqueue.client import RequestHandle
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.protocol import AgentRequest, Envelope, new_id, user_message
from tests import processes
from tests.deploy.test_local_fc import function_env, publish_and_collect
from tests.processes import workers

pytestmark = pytest.mark.slow

ADA = "Nice to meet you, Ada. I'll remember that."
TOLD_ADA = "You told me: your name is Ada."
TOLD_NOTHING = "You haven't told me anything yet."


def worker_args(url: str, ns: str, store: str) -> tuple[str, ...]:
    return processes.worker_args("tests.apps.busy:app", url, ns, store, balance=False)


@pytest.fixture(scope="module")
def served(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """One real worker process serving the slow agent; yields its topology."""
    ns = f"busy{new_id()[:6]}"
    store = f"sqlite:///{tmp_path_factory.mktemp('busy')}/sessions.db"
    with workers(worker_args(rabbitmq_url, ns, store)):
        yield Topology(namespace=ns, partitions=2, tool_partitions=2)


async def running(client: Client, text: str, session: str) -> RequestHandle:
    """Submit a turn and return once its answer has started streaming (it is running)."""
    handle = await client.submit(text, session_id=session, timeout=60)
    with anyio.fail_after(60):
        async for event in handle.events():
            if event.kind == "delta":
                return handle
    raise AssertionError(f"{text!r} ended before it streamed anything")


@pytest.mark.broker
async def test_enqueue_runs_the_new_turn_after_the_running_one(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "enq")
        second = await client.call("What did I tell you?", session_id="enq", on_busy="enqueue")
        assert (await first.final()).text == ADA
    assert second.text == TOLD_ADA


@pytest.mark.broker
async def test_reject_answers_rejected_at_once_and_the_running_turn_goes_on(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "rej")
        with pytest.raises(RequestBusy) as refused:
            await client.call("What did I tell you?", session_id="rej", on_busy="reject")
        assert (await first.final()).text == ADA
        after = await client.call("What did I tell you?", session_id="rej")
    assert refused.value.kind == "rejected"
    assert str(refused.value) == (
        f"session 'rej' is busy with request {first.id} (on_busy='reject'):"
        " send it again when that turn has finished"
    )
    assert after.text == TOLD_ADA  # the rejected turn left no trace


@pytest.mark.broker
async def test_interrupt_stops_the_running_turn_keeps_its_memory_and_runs_the_new_one(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "int")
        second = await client.call("What did I tell you?", session_id="int", on_busy="interrupt")
        stopped = await first.result()
    assert (stopped.kind, stopped.error) == ("interrupted", "request interrupted")
    assert second.text == TOLD_ADA  # the interrupted turn's memory was kept


@pytest.mark.broker
async def test_rollback_stops_the_running_turn_and_forgets_it(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "rb")
        second = await client.call("What did I tell you?", session_id="rb", on_busy="rollback")
        stopped = await first.result()
        later = await client.call("What did I tell you?", session_id="rb")
    assert stopped.kind == "interrupted"
    assert second.text == TOLD_NOTHING  # the session is as it was before the stopped turn
    assert later.text == TOLD_NOTHING


@pytest.mark.broker
async def test_latest_supersedes_the_waiting_turns_and_only_the_newest_runs(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "lat")
        waiting = await client.submit("My name is Bo.", session_id="lat", timeout=60)
        newest = await client.submit("What did I tell you?", session_id="lat", on_busy="latest")
        with pytest.raises(RequestBusy) as superseded:
            await waiting.final()
        assert (await first.final()).text == ADA  # the running turn finished
        answer = await newest.final()
    assert superseded.value.kind == "superseded"
    assert str(superseded.value) == (
        f"request superseded by {newest.id}, a newer turn of its session (on_busy='latest')"
    )
    assert answer.text == TOLD_ADA  # Bo's turn never ran


@pytest.mark.broker
async def test_a_worker_killed_during_an_interrupt_leaves_the_session_consistent_and_answers_everyone(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"bk{new_id()[:6]}"
    store = f"sqlite:///{tmp_path}/sessions.db"
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
    args = worker_args(rabbitmq_url, ns, store)
    with workers(args, args) as (active, standby):  # the first to subscribe is active
        async with Client(rabbitmq_url, topology=topology) as client:
            first = await running(client, "My name is Ada.", "kill")
            second = await client.submit(
                "What did I tell you?", session_id="kill", on_busy="interrupt"
            )
            active.kill()
            with anyio.fail_after(90):
                ended = await first.result()
                answer = await second.final()
            later = await client.call("What is my name?", session_id="kill", timeout=60)
        assert standby.proc.poll() is None
    # Answered once each: the first interrupted (by the survivor, or before the kill), or
    # finished if the survivor ran it before the interrupt reached it; the second answered.
    assert ended.kind in ("interrupted", "final")
    assert answer.text == TOLD_ADA
    assert later.text == "Your name is Ada."


async def test_on_the_fc_emulator_enqueue_reject_and_latest_hold_within_a_batch_and_the_rest_are_refused(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"fb{new_id()[:6]}", partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    policies = ["enqueue", "reject", "latest", "interrupt", "rollback"]

    def turn(session: str, text: str, policy: str | None) -> Envelope:
        event_id = new_id()
        request = AgentRequest(input=[user_message(text)], stream=False, on_busy=policy)  # type: ignore[arg-type]
        return Envelope(
            id=event_id,
            session_id=session,
            correlation_id=event_id,
            reply_to=reply_queue,
            body=request,
            created_at=time.time(),
        )

    pairs = {
        p: (turn(p, "My name is Ada.", None), turn(p, "What did I tell you?", p)) for p in policies
    }
    envelopes = [e for pair in pairs.values() for e in pair]
    env = function_env(mns_url, topology, tmp_path, APP="tests.apps.busy:app", TEST_MODEL_DELAY="0")
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        # One partition and a batch window: all ten turns reach one invocation together.
        fc_emulator = LocalFC(
            broker,
            topology,
            env=env,
            max_instances=1,
            trigger=TriggerConfig(batch_size=16, batch_window=1.0),
        )
        got = await publish_and_collect(
            broker, fc_emulator, topology, envelopes, reply_queue, timeout=120
        )
        dead = []
        while (delivery := await broker.get(topology.dead_letter_queue)) is not None:
            dead.append(read_dead_letter(delivery.body, topology.dead_letter_queue))
            await delivery.ack()

    def answer(envelope: Envelope) -> tuple[str, str]:
        body = got[envelope.id].body
        return body.kind, body.text or body.error or ""  # type: ignore[union-attr]

    first, second = pairs["enqueue"]
    assert answer(first) == ("final", ADA) and answer(second) == ("final", TOLD_ADA)
    first, second = pairs["reject"]
    assert answer(first) == ("final", ADA)
    assert answer(second) == (
        "rejected",
        f"session 'reject' is busy with request {first.id} (on_busy='reject'):"
        " send it again when that turn has finished",
    )
    first, second = pairs["latest"]
    assert answer(first)[0] == "superseded" and answer(second) == ("final", TOLD_NOTHING)
    for policy in ("interrupt", "rollback"):
        first, second = pairs[policy]
        assert answer(first) == ("final", ADA)
        assert answer(second) == (
            "failed",
            f"on_busy={policy!r} cannot hold here: on Function Compute a turn never runs while"
            " a newer turn of its session arrives; use 'enqueue', 'reject' or 'latest'",
        )
    assert sorted(d.envelope_id for d in dead) == sorted(
        pairs[p][1].id for p in ("interrupt", "rollback")
    )
