"""The life of one event on a worker: dedup, lease, deadline, run with retries, commit, reply, ack.

The same pipeline serves a local worker (settling broker deliveries) and the Function Compute
entrypoint (settling a trigger's batch), so both keep the same delivery semantics:

- a handled event's id is committed with the session state in one write, before the reply is
  published and the event acked, so a redelivery is answered from the stored reply;
- transient errors are retried with backoff, then the event is dead-lettered with its error and
  the caller is sent a `failed` result;
- an event past its deadline is not started, a running one is interrupted at it (`timed_out`),
  and a `Cancel` interrupts it (`cancelled`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from agentqueue.broker import tracing
from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerConnectionError, QueueMissing
from agentqueue.protocol.codec import encode
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import (
    AgentRequest,
    Body,
    Envelope,
    ResultEvent,
    ToolCall,
    ToolResult,
)
from agentqueue.workers.errors import LeaseLost, PermanentError, UnknownHandler
from agentqueue.workers.retry import RetryPolicy
from agentqueue.workers.session_store import Lease, SessionStore

log = logging.getLogger("agentqueue.worker")

OUTAGE_MAX_PAUSE = 5.0  # the longest wait before running an event again after a broker outage
MAX_OUTAGES = 60  # outages an event waits out (minutes of them) before they count as attempts
REPLY_GRACE = 10.0  # how long a reply waits for its queue to come back (its owner reconnecting)

Emit = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class HandlerResult:
    """What a handler produced: the reply body and the session's new state (None: unchanged)."""

    body: Body
    state: str | None = None


class Handler(Protocol):
    """Runs one kind of event body."""

    uses_state: bool

    def store_key(self, envelope: Envelope) -> str:
        """The store record this event is leased, deduplicated and saved under."""
        ...

    def deduplicates(self, envelope: Envelope) -> bool:
        """Whether this event's effect must be recorded so a redelivery is not run again."""
        ...

    async def handle(
        self, envelope: Envelope, state: str | None, emit: Emit, control: RunControl
    ) -> HandlerResult: ...


class Settler(Protocol):
    """How the caller of `process` settles the message it came from."""

    async def ack(self) -> None: ...

    async def hand_back(self) -> None: ...

    async def dead_letter(self, reason: str) -> None: ...


class RunControl:
    """Lets a `Cancel` or a deadline interrupt a running handler, and tells the handler why."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "cancelled" or "timed_out" once interrupted
        self._task: asyncio.Task[HandlerResult] | None = None

    def interrupt(self, reason: str) -> None:
        """Stop the handler; the first reason wins."""
        if self.reason is None:
            self.reason = reason
            if self._task is not None:
                self._task.cancel()

    async def run(self, coro: Awaitable[HandlerResult]) -> HandlerResult | None:
        """Run the handler; None when it was interrupted without producing a result."""
        self._task = asyncio.ensure_future(coro)
        if self.reason is not None:
            self._task.cancel()
        try:
            return await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.reason is not None and current is not None and not current.cancelling():
                return None
            raise


def failure_body(envelope: Envelope, kind: str, error: str) -> Body:
    """The reply that tells the caller an event did not succeed, shaped for its caller."""
    body = envelope.body
    if isinstance(body, ToolCall):
        return ToolResult(
            call_id=body.call_id or envelope.id, name=body.name, ok=False, output=error
        )
    return ResultEvent(request_id=envelope.id, kind=kind, error=error)  # type: ignore[arg-type]


class EventProcessor:
    """Runs events through their handlers with the delivery semantics above."""

    def __init__(
        self,
        broker: Broker,
        store: SessionStore,
        handlers: dict[type, Handler],
        *,
        worker_id: str,
        retry: RetryPolicy | None = None,
        lease_ttl: float = 30.0,
        delivery_limit: int = 20,
        reply_grace: float = REPLY_GRACE,
    ) -> None:
        self.broker = broker
        self.store = store
        self.handlers = handlers
        self.worker_id = worker_id
        self.retry = retry or RetryPolicy()
        self.lease_ttl = lease_ttl
        self.delivery_limit = delivery_limit
        self.reply_grace = reply_grace
        self.running: dict[str, RunControl] = {}
        self._cancelled_early: dict[str, float] = {}
        self.accepting = True

    def lane_key(self, envelope: Envelope) -> str:
        """The session lane an event runs in: its store key, so tool calls never queue behind
        the agent turn that is waiting for them."""
        handler = self.handlers.get(type(envelope.body))
        return handler.store_key(envelope) if handler is not None else envelope.session_id

    def cancel(self, request_id: str) -> bool:
        """Interrupt a running request, or remember to cancel it when it starts."""
        control = self.running.get(request_id)
        if control is not None:
            control.interrupt("cancelled")
            return True
        now = time.monotonic()
        self._cancelled_early = {k: t for k, t in self._cancelled_early.items() if now - t < 600}
        self._cancelled_early[request_id] = now
        return False

    async def process(
        self, envelope: Envelope, settle: Settler, delivery_count: int = 1, queue: str | None = None
    ) -> None:
        """Handle one decoded event (that came from `queue`) and settle it."""
        span = tracing.processing(
            self.broker, envelope, queue, worker=self.worker_id, delivery_count=delivery_count
        )
        with span:
            await self._process(envelope, settle, delivery_count)

    async def _process(self, envelope: Envelope, settle: Settler, delivery_count: int) -> None:
        handler = self.handlers.get(type(envelope.body))
        if handler is None:
            await self._give_up(
                envelope, settle, f"this worker does not handle {envelope.type!r} events"
            )
            return
        key = handler.store_key(envelope)
        dedup = handler.deduplicates(envelope)
        if dedup:
            stored = await self.store.handled(key, envelope.id)
            if stored is not None:
                log.info(
                    "event %s was handled before; answering from the stored reply", envelope.id
                )
                await self._reply(envelope, stored)
                await settle.ack()
                return
        if envelope.deadline is not None and time.time() >= envelope.deadline:
            waited = time.time() - envelope.created_at if envelope.created_at else 0.0
            error = f"deadline passed before the event started (it waited {waited:.1f} s)"
            await self._reply(
                envelope, self._encode_reply(envelope, failure_body(envelope, "timed_out", error))
            )
            await settle.ack()
            return
        if delivery_count > self.delivery_limit:
            await self._give_up(
                envelope,
                settle,
                f"delivered {delivery_count} times without being settled"
                " (a worker probably crashed while handling it)",
            )
            return
        if not (dedup or handler.uses_state):
            # Nothing to record and no state to guard (an idempotent tool): no lease needed.
            await self._run(envelope, handler, dedup, None, settle)
            return
        for attempt in range(1, self.retry.max_attempts + 1):
            lease = await self._acquire(key)
            if lease is None:
                await settle.hand_back()
                return
            try:
                # Asked again under the lease: another worker with a copy of this event (a
                # redelivery after a reconnect) may have finished it while we waited for it.
                if dedup and (stored := await self.store.handled(key, envelope.id)) is not None:
                    await self._reply(envelope, stored)
                    await settle.ack()
                    return
                await self._run(envelope, handler, dedup, lease, settle)
                return
            except LeaseLost as exc:
                # Not handed back: the session's later events, queued behind this one in its
                # lane, would then run before it. Run it again here, in order, on a new lease.
                log.warning("%s; running event %s again (try %d)", exc, envelope.id, attempt)
            finally:
                await self.store.release(lease)
        await self._give_up(
            envelope,
            settle,
            f"lost the lease on session {key!r} {self.retry.max_attempts} times while handling"
            f" the event: it runs longer than the lease ({self.lease_ttl:.0f} s);"
            " raise the lease TTL (AGENTQUEUE_LEASE_TTL)",
        )

    async def _run(
        self,
        envelope: Envelope,
        handler: Handler,
        dedup: bool,
        lease: Lease | None,
        settle: Settler,
    ) -> None:
        state = (
            await self.store.load_state(lease.session_id) if lease and handler.uses_state else None
        )
        emit = self._emitter(envelope)
        attempt = outages = 0
        while True:
            attempt += 1
            control = RunControl()
            if envelope.id in self._cancelled_early:
                del self._cancelled_early[envelope.id]
                control.interrupt("cancelled")
            self.running[envelope.id] = control
            timer = self._arm_deadline(envelope, control)
            # A turn may outlast the lease (a slow model): keep it alive while the handler runs.
            keeper = asyncio.ensure_future(self._keep_lease(lease)) if lease is not None else None
            try:
                result = await control.run(handler.handle(envelope, state, emit, control))
                break
            except (PermanentError, UnknownHandler) as exc:
                await self._give_up(envelope, settle, str(exc))
                return
            except Exception as exc:
                if isinstance(exc, BrokerConnectionError) and outages < MAX_OUTAGES:
                    # The broker is away (restarting, the connection cut) while the handler
                    # publishes a delta or a tool call: not the event's fault, so no attempt is
                    # used up (three quick failures would dead-letter a healthy request). Wait,
                    # then run it again; the deadline, or MAX_OUTAGES, ends the waiting.
                    attempt -= 1
                    outages += 1
                    delay = min(OUTAGE_MAX_PAUSE, self.retry.delay(outages))
                    log.warning(
                        "event %s: the broker is away (%s); running it again in %.1f s",
                        envelope.id,
                        exc,
                        delay,
                    )
                else:
                    error = f"{type(exc).__name__}: {exc}"
                    if attempt >= self.retry.max_attempts:
                        await self._give_up(
                            envelope, settle, f"failed after {attempt} attempts: {error}"
                        )
                        return
                    delay = self.retry.delay(attempt)
                    tracing.record_retry(envelope, exc, attempt, delay)
                    log.warning(
                        "event %s attempt %d failed (%s); retrying in %.2f s",
                        envelope.id,
                        attempt,
                        error,
                        delay,
                    )
                await anyio.sleep(delay)
                if lease is not None:
                    lease = await self.store.renew(lease, self.lease_ttl)
            finally:
                self.running.pop(envelope.id, None)
                if timer is not None:
                    timer.cancel()
                if keeper is not None:
                    keeper.cancel()
                    await asyncio.wait({keeper})
        if result is None:  # interrupted before the handler could answer: state unchanged
            reason = control.reason or "cancelled"
            result = HandlerResult(
                failure_body(envelope, reason, f"request {reason.replace('_', ' ')}")
            )
        reply = self._encode_reply(envelope, result.body)
        if lease is not None and dedup:
            await self.store.commit(lease, result.state, envelope.id, reply)
        await self._reply(envelope, reply)
        await settle.ack()

    async def _keep_lease(self, lease: Lease) -> None:
        """Renew `lease` every third of its TTL until cancelled or lost."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                await self.store.renew(lease, self.lease_ttl)
            except LeaseLost as exc:
                # Fencing will refuse this run's commit; the pipeline handles that.
                log.warning("%s while its event was still running", exc)
                return
            except Exception as exc:  # the store is unreachable: try again next period
                log.warning("could not renew the lease on %r: %s", lease.session_id, exc)

    async def _acquire(self, session_id: str) -> Lease | None:
        delay = 0.01
        while self.accepting:
            lease = await self.store.acquire(session_id, self.worker_id, self.lease_ttl)
            if lease is not None:
                return lease
            # Another worker still runs this session (a hand-over in progress): wait for it.
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return None

    def _arm_deadline(self, envelope: Envelope, control: RunControl) -> asyncio.TimerHandle | None:
        if envelope.deadline is None:
            return None
        loop = asyncio.get_running_loop()
        delay = max(0.0, envelope.deadline - time.time())
        return loop.call_later(delay, control.interrupt, "timed_out")

    def _emitter(self, envelope: Envelope) -> Emit:
        seq = 0
        body = envelope.body
        streaming = isinstance(body, AgentRequest) and body.stream and envelope.reply_to

        async def emit(text: str) -> None:
            nonlocal seq
            if not streaming:
                return
            seq += 1
            delta = ResultEvent(request_id=envelope.id, kind="delta", seq=seq, text=text)
            await self._reply(envelope, self._encode_reply(envelope, delta))

        return emit

    def _encode_reply(self, envelope: Envelope, body: Body) -> bytes:
        reply = Envelope(
            id=new_id(),
            session_id=envelope.session_id,
            key=envelope.key,
            correlation_id=envelope.correlation_id or envelope.id,
            body=body,
            created_at=time.time(),
            trace=envelope.trace,
        )
        return encode(reply)

    async def _reply(self, envelope: Envelope, reply: bytes) -> None:
        if not envelope.reply_to:
            return
        pause = 0.25
        give_up = time.monotonic() + self.reply_grace
        if envelope.deadline is not None:
            give_up = min(give_up, time.monotonic() + envelope.deadline - time.time())
        while True:
            try:
                with tracing.publishing_reply(self.broker, envelope.reply_to, reply, envelope):
                    await self.broker.publish(envelope.reply_to, reply)
                return
            except QueueMissing as exc:
                # The requester's queue is gone: it may be reconnecting (an exclusive queue is
                # declared again after a reconnect, on a live node of a cluster), or gone for
                # good. Wait a little for the first; the answer stays in the session store.
                if time.monotonic() + pause > give_up:
                    log.warning("no one to answer %s: %s", envelope.id, exc)
                    return
                await anyio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _give_up(self, envelope: Envelope, settle: Settler, reason: str) -> None:
        log.error(
            "dead-lettering event %s of session %r: %s", envelope.id, envelope.session_id, reason
        )
        tracing.record_dead_letter(envelope, reason)
        await settle.dead_letter(reason)
        await self._reply(
            envelope, self._encode_reply(envelope, failure_body(envelope, "failed", reason))
        )
