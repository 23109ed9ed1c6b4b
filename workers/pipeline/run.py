"""Run and commit: the handler with retries, a deadline and cancellation; then one fenced write."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import anyio

from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.workers.errors import LeaseLost, PermanentError, UnknownHandler
from agentqueue.workers.handling import HandlerResult, RunControl, failure_body
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.stream import Emitter
from agentqueue.workers.session_store import Lease

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")

OUTAGE_MAX_PAUSE = 5.0  # the longest wait before running an event again after a broker outage
MAX_OUTAGES = 60  # outages an event waits out (minutes of them) before they count as attempts
KEEPER_GRACE = 2.0  # seconds to wait for the lease keeper to stop once its event is done


class Commit:
    """Saves the new state, the event's id and its reply in one fenced write, then acks."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        await call_next(event)
        if event.result is None:
            return  # run decided otherwise (dead letter)
        assert event.envelope is not None
        reply = self.pipeline.encode_reply(event.envelope, event.result.body)
        if event.lease is not None and event.dedup:
            await self.pipeline.store.commit(
                event.lease, event.result.state, event.envelope.id, reply
            )
            event.reply_stored = True
        event.ack(reply)


class Run:
    """Runs the handler; transient errors are retried with backoff up to `max_attempts`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        p = self.pipeline
        assert event.handler is not None and event.envelope is not None
        lease = event.lease
        state: str | None = None
        if lease is not None and event.handler.uses_state:
            state = await p.store.load_state(lease.session_id)
        emit = p.emitter(event)
        attempt = outages = 0
        while True:
            attempt += 1
            try:
                await emit.begin_attempt()  # a restart marker, when the stream ran before
                result, control = await self._attempt(event, state, emit)
                break
            except (PermanentError, UnknownHandler) as exc:
                event.dead_letter(str(exc), exc)
                return
            except Exception as exc:
                delay, attempt, outages = self._failed(event, exc, attempt, outages)
            if delay is None:
                return  # out of attempts: dead-lettered
            await anyio.sleep(delay)
            if event.lease is not None:
                event.lease = await p.store.renew(event.lease, p.lease_ttl)
        if result is None:  # interrupted before the handler could answer: state unchanged
            reason = control.reason or "cancelled"
            body = failure_body(event.envelope, reason, f"request {reason.replace('_', ' ')}")
            result = HandlerResult(body)
        elif control.discard_state:  # rolled back: the turn's answer, not its memory
            result = HandlerResult(result.body)
        event.result = result

    def _failed(
        self, event: Event, exc: Exception, attempt: int, outages: int
    ) -> tuple[float | None, int, int]:
        """After a failed attempt: the pause before the next (None: give up), and the counts."""
        p = self.pipeline
        envelope_id = event.envelope.id if event.envelope else "?"
        if isinstance(exc, BrokerConnectionError) and outages < MAX_OUTAGES:
            # The broker is away (restarting, the connection cut) while the handler publishes
            # a delta or a tool call: not the event's fault, so no attempt is used up. The
            # deadline, or MAX_OUTAGES, ends the waiting.
            delay = min(OUTAGE_MAX_PAUSE, p.retry.delay(outages + 1))
            log.warning(
                "event %s: the broker is away (%s); running it again in %.1f s",
                envelope_id,
                exc,
                delay,
            )
            return delay, attempt - 1, outages + 1
        error = f"{type(exc).__name__}: {exc}"
        if attempt >= p.retry.max_attempts:
            event.dead_letter(f"failed after {attempt} attempts: {error}", exc)
            return None, attempt, outages
        delay = p.retry.delay(attempt)
        p.notify_retry(event, exc, attempt, delay)
        log.warning(
            "event %s attempt %d failed (%s); retrying in %.2f s",
            envelope_id,
            attempt,
            error,
            delay,
            exc_info=exc,  # where it broke, not only what
        )
        return delay, attempt, outages

    async def _attempt(
        self, event: Event, state: str | None, emit: Emitter
    ) -> tuple[HandlerResult | None, RunControl]:
        """One run of the handler, interruptible by a cancel or the deadline."""
        p, envelope, handler = self.pipeline, event.envelope, event.handler
        assert envelope is not None and handler is not None
        control = p.control_for(envelope)
        p.running[envelope.id] = control
        timer = None
        if envelope.deadline is not None:
            delay = max(0.0, envelope.deadline - time.time())
            timer = asyncio.get_running_loop().call_later(delay, control.interrupt, "timed_out")
        # A turn may outlast the lease (a slow model): keep it alive while the handler runs.
        keeper = asyncio.ensure_future(self._keep(event.lease)) if event.lease else None
        try:
            return await control.run(handler.handle(envelope, state, emit, control)), control
        finally:
            p.running.pop(envelope.id, None)
            if timer is not None:
                timer.cancel()
            if keeper is not None:
                keeper.cancel()
                # redis-py can swallow a cancellation that lands inside a command, and the
                # keeper then runs on: never wait for it for ever. Once the lease is released
                # its next renewal fails (LeaseLost) and it ends by itself.
                await asyncio.wait({keeper}, timeout=KEEPER_GRACE)

    async def _keep(self, lease: Lease) -> None:
        """Renew `lease` every third of its TTL until cancelled or lost."""
        p = self.pipeline
        while True:
            await anyio.sleep(p.lease_ttl / 3)
            try:
                await p.store.renew(lease, p.lease_ttl)
            except LeaseLost as exc:
                # Fencing will refuse this run's commit; the lease stage runs it again.
                log.warning("%s while its event was still running", exc)
                return
            except Exception as exc:  # the store is unreachable: try again next period
                log.warning("could not renew the lease on %r: %s", lease.session_id, exc)
