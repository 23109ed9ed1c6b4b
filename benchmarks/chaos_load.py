"""The chaos run's client: N requests over S sessions, each session's requests in order.

Every session publishes its requests in sequence order, keeping up to `window` of them in flight
(so a session's later requests wait in the queue behind earlier ones, which is what a fail-over
must keep in order), and all sessions run at once. The client never retries a request with a new
id: a publish that fails (the connection was cut, the broker is restarting) is published again
with the same request id until the broker confirms it, and a copy that did arrive twice is
answered from the session store. A request is then awaited until its deadline (plus grace).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import anyio

from agentqueue import Client
from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError
from agentqueue.broker.topology import Topology
from agentqueue.client import RequestHandle
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import AgentRequest, Envelope, ResultEvent, user_message
from benchmarks.chaos_app import request_text

log = logging.getLogger("agentqueue.chaos")

PUBLISH_RETRY_PAUSE = 0.5  # seconds between publishing the same request again
LATE_WAIT = 120.0  # seconds a request the client gave up on is still watched for a late answer
CLIENT_GAVE_UP = "no answer within"  # how Client's own timed_out (no reply at all) begins


@dataclass(slots=True)
class Outcome:
    """What became of one request."""

    session: str
    seq: int
    request_id: str
    published: bool = False
    publish_attempts: int = 0
    published_at: float | None = None  # time.monotonic() of the confirmed publish
    kind: str | None = None  # the terminal ResultEvent kind; None: no answer came
    text: str | None = None
    error: str | None = None
    seconds: float | None = None
    late_kind: str | None = None  # the terminal kind a worker sent after the client gave up

    @property
    def answered(self) -> bool:
        """A worker answered (a client-side timeout is no answer)."""
        return self.kind is not None


@dataclass
class ChaosLoad:
    """Sends the requests and records every outcome."""

    client: Client
    requests: int
    sessions: int
    window: int = 3
    timeout: float = 300.0
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    answered: int = 0
    publish_retries: int = 0
    started: float = 0.0  # time.monotonic() when the load began

    def plan(self) -> dict[str, list[Outcome]]:
        """Request ids and sequence numbers per session: requests spread evenly over sessions."""
        run = new_id()[:8]
        plan: dict[str, list[Outcome]] = {}
        for i in range(self.requests):
            session = f"s{i % self.sessions:04d}-{run}"
            chain = plan.setdefault(session, [])
            outcome = Outcome(session, len(chain), f"{session}-{len(chain):05d}")
            chain.append(outcome)
            self.outcomes[outcome.request_id] = outcome
        return plan

    @property
    def sent(self) -> int:
        """Requests published (confirmed by the broker at least once)."""
        return sum(1 for o in self.outcomes.values() if o.published)

    async def run(self) -> None:
        """Publish every session's requests and wait for all answers (or deadlines)."""
        plan = self.plan()
        self.started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for chain in plan.values():
                tg.start_soon(self._session, chain)

    async def _session(self, chain: list[Outcome]) -> None:
        slots = anyio.Semaphore(self.window)
        async with anyio.create_task_group() as tg:
            for outcome in chain:
                await slots.acquire()
                handle = await self._publish(outcome)
                tg.start_soon(self._await, outcome, handle, slots)

    async def _publish(self, outcome: Outcome) -> RequestHandle:
        request = AgentRequest(
            id=outcome.request_id,
            input=[user_message(request_text(outcome.session, outcome.seq, outcome.request_id))],
        )
        while True:
            outcome.publish_attempts += 1
            try:
                handle = await self.client.submit(
                    request, session_id=outcome.session, timeout=self.timeout
                )
            except (BrokerError, ConnectionError, OSError, RuntimeError) as exc:
                # Unknown whether it arrived: the same id again is safe, the store dedups it.
                self.publish_retries += 1
                log.info("publishing %s failed (%s); publishing it again", outcome.request_id, exc)
                await anyio.sleep(PUBLISH_RETRY_PAUSE)
                continue
            outcome.published, outcome.published_at = True, time.monotonic()
            return handle

    async def _await(self, outcome: Outcome, handle: RequestHandle, slots: anyio.Semaphore) -> None:
        started = time.monotonic()
        late: asyncio.Queue[Envelope] | None = None
        try:
            event = await handle.result()
            if event.kind == "timed_out" and (event.error or "").startswith(CLIENT_GAVE_UP):
                # The client gave up (its deadline and grace passed): watch for an answer a
                # worker still sends (`timed_out` once it dequeues the request), to tell a
                # request answered too late from one lost.
                late = self.client.router.expect(outcome.request_id)
        finally:
            slots.release()
        if late is None:
            outcome.kind, outcome.text, outcome.error = event.kind, event.text, event.error
            outcome.seconds = time.monotonic() - started
            self.answered += 1
            return
        try:
            with anyio.move_on_after(LATE_WAIT):
                while True:
                    body = (await late.get()).body
                    if isinstance(body, ResultEvent) and body.terminal:
                        outcome.late_kind = body.kind
                        return
        finally:
            self.client.router.forget(outcome.request_id)


def chaos_client(broker: Broker | str, topology: Topology, timeout: float) -> Client:
    """The run's client: its replies go to a durable queue, which keeps them while it is cut off."""
    return Client(
        broker,
        topology=topology,
        reply_queue=topology.reply_queue("chaos-client"),
        durable_replies=True,
        default_timeout=timeout,
    )
