"""A second turn while the session is busy, for every `on_busy` policy: over RabbitMQ with real
worker processes, through the FC handler, and with the worker killed during an interrupt."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentqueue import Client, RequestBusy
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.topology import Topology
from agentqueue.client import RequestHandle
from agentqueue.deploy.local_mns import LocalMNS
from agentqueue.protocol import AgentRequest, Envelope, encode, new_id, user_message
from agentqueue.workers import fc
from tests.processes import workers
from tests.workers.test_fc_handler import REPLIES, drain, effects, replies  # noqa: F401

pytestmark = pytest.mark.slow

ADA = "Nice to meet you, Ada. I'll remember that."
TOLD_ADA = "You told me: your name is Ada."
TOLD_NOTHING = "You haven't told me anything yet."


def worker_args(url: str, ns: str, store: str) -> tuple[str, ...]:
    return (
        "--app",
        "tests.apps.busy:app",
        "--broker",
        url,
        "--store",
        store,
        "--namespace",
        ns,
        "--partition-count",
        "2",
        "--tool-partition-count",
        "2",
        "--no-balance",
    )


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


async def test_enqueue_runs_the_new_turn_after_the_running_one(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "enq")
        second = await client.call("What did I tell you?", session_id="enq", on_busy="enqueue")
        assert (await first.final()).text == ADA
    assert second.text == TOLD_ADA


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


async def test_interrupt_stops_the_running_turn_keeps_its_memory_and_runs_the_new_one(
    rabbitmq_url: str, served: Topology
) -> None:
    async with Client(rabbitmq_url, topology=served) as client:
        first = await running(client, "My name is Ada.", "int")
        second = await client.call("What did I tell you?", session_id="int", on_busy="interrupt")
        stopped = await first.result()
    assert (stopped.kind, stopped.error) == ("interrupted", "request interrupted")
    assert second.text == TOLD_ADA  # the interrupted turn's memory was kept


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


def _batch(*turns: tuple[str, str | None]) -> tuple[bytes, list[str]]:
    ids, messages = [], []
    for text, policy in turns:
        event_id = new_id()
        ids.append(event_id)
        envelope = Envelope(
            id=event_id,
            session_id="fc-busy",
            correlation_id=event_id,
            reply_to=REPLIES,
            body=AgentRequest(input=[user_message(text)], stream=False, on_busy=policy),  # type: ignore[arg-type]
            created_at=time.time(),
        )
        messages.append(
            {"requestId": new_id(), "messageId": new_id(), "messageBody": encode(envelope).decode()}
        )
    return json.dumps(messages).encode(), ids


@pytest.mark.parametrize("policy", ["enqueue", "reject", "latest", "interrupt", "rollback"])
def test_the_fc_handler_holds_enqueue_reject_and_latest_within_a_batch_and_refuses_the_rest(
    policy: str,
    effects: Path,  # noqa: F811
    local_mns: LocalMNS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTQUEUE_APP", "tests.apps.busy:app")
    payload, (first, second) = _batch(("My name is Ada.", None), ("What did I tell you?", policy))
    outcome = json.loads(fc.handler(payload, None))
    got = replies(local_mns)
    dead = [read_dead_letter(d, "fcx-dead-letters") for d in drain(local_mns, "fcx-dead-letters")]
    kinds = (got[first].body.kind, got[second].body.kind)  # type: ignore[union-attr]
    if policy == "enqueue":
        assert kinds == ("final", "final") and got[second].body.text == TOLD_ADA  # type: ignore[union-attr]
    elif policy == "reject":
        assert kinds == ("final", "rejected")
        assert got[second].body.error == (  # type: ignore[union-attr]
            f"session 'fc-busy' is busy with request {first} (on_busy='reject'):"
            " send it again when that turn has finished"
        )
    elif policy == "latest":
        assert kinds == ("superseded", "final")
        assert got[second].body.text == TOLD_NOTHING  # type: ignore[union-attr]
    else:
        assert kinds == ("final", "failed")
        assert outcome["dead_lettered"] == 1 and [d.envelope_id for d in dead] == [second]
        assert got[second].body.error == (  # type: ignore[union-attr]
            f"on_busy={policy!r} cannot hold here: on Function Compute a turn never runs while"
            " a newer turn of its session arrives; use 'enqueue', 'reject' or 'latest'"
        )
