"""App middleware on the pipeline seam: it sees every event before and after, can refuse one,
and an exception it raises never loses the event — on a local worker and through FC."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agentqueue import App, Client, RequestFailed
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import Envelope, ToolCall, ToolResult, decode_dead_letter, encode, new_id
from agentqueue.workers import fc
from agentqueue.workers.errors import Refused
from agentqueue.workers.pipeline import Event, Middleware, Next
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.workers.test_delivery import background
from tests.workers.test_fc_handler import drain, effects, lines, replies  # noqa: F401


class TenantGate(Middleware):
    """Per-tenant logging and a block list, as a user would write it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []  # (when, tool tenant, outcome)
        self.failed_once: set[str] = set()

    async def process(self, event: Event, call_next: Next) -> None:
        assert event.envelope is not None
        body = event.envelope.body
        tenant = body.arguments.get("tenant", "?") if isinstance(body, ToolCall) else "?"
        self.seen.append(("before", tenant, None))
        if tenant == "suspended":
            raise Refused(f"tenant {tenant!r} is suspended; ask billing to lift it")
        if tenant == "flaky" and event.envelope.id not in self.failed_once:
            self.failed_once.add(event.envelope.id)
            raise RuntimeError("the audit log is unreachable")
        await call_next(event)
        self.seen.append(("after", tenant, event.outcome))


async def test_app_middleware_sees_every_event_refuses_one_and_an_error_it_raises_loses_nothing() -> (
    None
):
    gate = TenantGate()
    app = App("tenants")
    app.add_middleware(gate)
    ran: list[str] = []

    @app.tool("work")
    async def work(tenant: str) -> str:
        ran.append(tenant)
        return f"done for {tenant}"

    topology = Topology(namespace="mw", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://mw-{new_id()[:8]}") as broker, background() as tg:
        store = MemorySessionStore(f"memory://mw-{new_id()[:8]}")
        await tg.start(Worker(app, broker, store, worker_settings(topology)).run)
        async with Client(broker, topology=topology) as client:
            assert await client.call_tool("work", {"tenant": "acme"}, timeout=10) == "done for acme"
            with pytest.raises(RequestFailed) as refused:
                await client.call_tool("work", {"tenant": "suspended"}, timeout=10)
            # Raises once: the queue is handed back, the event comes again and is served.
            flaky = await client.call_tool("work", {"tenant": "flaky"}, timeout=20)
        dead = await broker.get(topology.dead_letter_queue)
        assert dead is not None
        record = decode_dead_letter(dead.body)
        await dead.ack()
        assert await broker.get(topology.dead_letter_queue) is None
    assert str(refused.value) == "tenant 'suspended' is suspended; ask billing to lift it"
    assert record.reason == str(refused.value)
    assert flaky == "done for flaky"
    assert ran == ["acme", "flaky"]  # the refused tenant's tool never ran
    assert gate.seen == [
        ("before", "acme", None),
        ("after", "acme", "ack"),
        ("before", "suspended", None),
        ("before", "flaky", None),  # raised here
        ("before", "flaky", None),  # redelivered
        ("after", "flaky", "ack"),
    ]


def _trigger_batch(*calls: tuple[str, str]) -> bytes:
    """A RawData trigger payload of tool calls `(session, tenant)` to the fcx namespace."""
    messages = []
    for session, tenant in calls:
        event_id = new_id()
        envelope = Envelope(
            id=event_id,
            session_id=session,
            correlation_id=event_id,
            reply_to="fcx-reply-fixtures",
            body=ToolCall(name="work", arguments={"tenant": tenant}, call_id=event_id),
            created_at=time.time(),
        )
        messages.append(
            {"requestId": new_id(), "messageId": new_id(), "messageBody": encode(envelope).decode()}
        )
    return json.dumps(messages).encode()


def test_app_middleware_runs_in_the_fc_handler_refuses_and_its_error_makes_the_trigger_retry(
    effects: Path,  # noqa: F811
    local_mns: LocalMNS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTQUEUE_APP", "tests.apps.fc_middleware:app")
    payload = _trigger_batch(("s1", "acme"), ("s2", "suspended"), ("s3", "flaky"))
    with pytest.raises(fc.BatchNotDone, match="RuntimeError: the audit log is unreachable"):
        fc.handler(payload, None)
    retried = json.loads(fc.handler(payload, None))  # the trigger retries the whole batch
    assert retried == {"handled": 2, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    answers = {e.body.output for e in replies(local_mns).values()}  # type: ignore[union-attr]
    assert answers == {
        "done for acme",
        "done for flaky",
        "tenant 'suspended' is suspended; ask billing to lift it",
    }
    assert all(isinstance(e.body, ToolResult) for e in replies(local_mns).values())
    # The trigger retries the whole batch, so the refusal is dead-lettered by each invocation.
    dead = [read_dead_letter(d, "fcx-dead-letters") for d in drain(local_mns, "fcx-dead-letters")]
    assert [d.reason for d in dead] == [
        "tenant 'suspended' is suspended; ask billing to lift it"
    ] * 2
    log = lines(effects)
    assert [line for line in log if line.startswith("ran ")] == ["ran acme", "ran flaky"]
    assert log.count("before acme") == 2 and log.count("after acme ack") == 2
    assert log.count("before flaky") == 2 and log.count("after flaky ack") == 1
    assert "after suspended" not in " ".join(log)
