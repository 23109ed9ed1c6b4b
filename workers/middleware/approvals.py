"""A session paused for an approval: later turns wait behind it, a decision's answer reaches the
paused request's caller, and an approval that never comes turns into a denial.

The paused turn is not running anywhere (its worker slot is free), so its later turns cannot
wait in the session's lane as they wait behind a running turn: a worker would hold them, and on
Function Compute nothing can be held between batches. They wait in the session's saved state
instead, in arrival order, and are acked; once the pause is decided they run one after
another, in the lane of the event that decided it, through the same pipeline (dedup, deadline,
lease, commit). A worker that dies meanwhile leaves them in the store: the next event of the
session runs them first.

The timeout is a denial published when the turn pauses, an `approval` like any other with
`not_before` its expiry: it waits where delayed requests wait (the broker's own delay on MNS, a
timer in the session store's backend on RabbitMQ; see `workers/delayed.py`), then is decided
once, in order, on whichever worker owns the session then. A decision that arrives after the
expiry is a denial too, whatever it asked, and a denial that arrives after a decision is
answered from the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from agentqueue.protocol.codec import decode, encode, encode_dead_letter
from agentqueue.protocol.messages import (
    AgentRequest,
    Approval,
    Cancel,
    DeadLetter,
    Envelope,
    ResultEvent,
    TraceContext,
)
from agentqueue.workers import approval_state, delayed
from agentqueue.workers.app import App
from agentqueue.workers.approval_state import Approvals, Caller
from agentqueue.workers.middleware.busy import busy_error, policy_of
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")

_DRAINED = "approvals.drained"  # event.extra: a turn that waited behind a pause, run now


def denial_id(session_id: str, request_id: str, call_id: str) -> str:
    """The envelope id of a paused call's timeout denial (one per call, so copies dedup)."""
    return f"approval-timeout:{session_id}:{request_id}:{call_id}"


class ApprovalPauses(Middleware):
    """Makes a paused session's later turns wait, answers the paused caller, runs the timeout."""

    # process() passes other events straight on
    processes = frozenset({"agent_request", "approval", "cancel"})

    def __init__(self, app: App) -> None:
        self.app = app
        self._pipeline: Pipeline | None = None

    def bind(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def process(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        handler = event.handler
        if envelope is None or handler is None or not handler.uses_state:
            await call_next(event)
            return
        body = envelope.body
        if not isinstance(body, (AgentRequest, Approval, Cancel)):
            await call_next(event)
            return
        drained = event.extra.get(_DRAINED, False)
        if isinstance(body, AgentRequest) and not drained and await self._held(event, body):
            return
        await call_next(event)
        if event.outcome != "ack" or event.reply is None:
            return
        result = decode(event.reply).body
        if not isinstance(result, ResultEvent):
            return
        # A decision answered from the decided record (a second approve, a late timeout) was
        # forwarded when it was made; one answered by dedup may not have been (a crash).
        fresh = event.result is None or event.result.state is not None
        decides = isinstance(body, Approval | Cancel)
        if isinstance(body, Approval | Cancel) and fresh:
            await self._answer_caller(event, body, result)
        if result.kind == "approval_required" and result.approval is not None:
            await self._schedule_timeout(envelope, result)
        if decides and not drained:
            await self._drain(event)

    @property
    def _p(self) -> Pipeline:
        assert self._pipeline is not None, "ApprovalPauses is used before its pipeline is built"
        return self._pipeline

    # --- later turns wait behind the pause ------------------------------------------------

    async def _held(self, event: Event, request: AgentRequest) -> bool:
        """Whether a new turn was held back: rejected, or kept waiting behind the pause."""
        p = self._p
        assert event.envelope is not None
        approvals = approval_state.read(await p.store.load_state(event.key))
        if not approvals.holds_turns:
            return False
        if await p.store.handled(event.key, event.envelope.id) is not None:
            return False  # handled before (the paused turn itself, again): answered from store
        if policy_of(self.app, request) == "reject":
            # A paused turn keeps its session busy. interrupt, rollback and latest act on a
            # running turn and the turns queued with it, and a paused one is neither: they wait.
            paused = approvals.paused
            ahead = paused.caller.request_id if paused else decode(approvals.waiting[0].encode()).id
            error = busy_error(event.envelope.session_id, ahead)
            event.ack(p.failure_reply(event, "rejected", error))
            return True
        if not await self._wait_behind(event):
            return False
        if approvals.paused is None and event.outcome == "ack":
            await self._drain(event)  # left by a worker that died while running them
        return True

    async def _wait_behind(self, event: Event) -> bool:
        """Keep the turn in the session's state behind the pause and ack it; False when the
        pause was decided meanwhile (it runs now, as usual)."""
        assert event.envelope is not None
        text = event.data.decode()
        envelope_id = event.envelope.id

        def add(approvals: Approvals) -> bool:
            if not approvals.holds_turns:
                return False
            if not approvals.waits(envelope_id):
                approvals.waiting.append(text)
            return True

        kept = await self._change(event, add, f"{envelope_id}#waits")
        if kept is None:
            event.hand_back()  # shutting down while another worker holds the session
            return True
        if kept:
            log.info(
                "request %s waits behind the paused turn of session %r",
                envelope_id,
                event.envelope.session_id,
            )
            event.ack()
        return kept

    async def _change(
        self, event: Event, change: Callable[[Approvals], bool], record_id: str
    ) -> bool | None:
        """Apply `change` to the session's approvals under its lease (None: no lease)."""
        p = self._p
        delay = 0.01
        lease = None
        while p.accepting and lease is None:
            lease = await p.store.acquire(event.key, p.worker_id, p.lease_ttl)
            if lease is None:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        if lease is None:
            return None
        try:
            state = await p.store.load_state(event.key)
            approvals = approval_state.read(state)
            changed = change(approvals)
            if changed and state is not None:
                new_state = approval_state.write(state, approvals)
                await p.store.commit(lease, new_state, record_id, b"")
            return changed
        finally:
            await p.store.release(lease)

    async def _drain(self, event: Event) -> None:
        """Run the turns that waited behind the pause, oldest first, until one pauses again.

        Stopped early (shutting down), `event` is handed back instead of acked: delivered
        again, it runs the rest, so no waiting turn is left without an event to run it.
        """
        p = self._p
        while True:
            if not p.accepting:
                event.hand_back()
                return
            approvals = approval_state.read(await p.store.load_state(event.key))
            if approvals.paused is not None or not approvals.waiting:
                return
            data = approvals.waiting[0].encode()
            settler = _WaitedSettler(self, event, data)
            waited = Event(data, settler, queue=event.queue, message_id=event.message_id)
            waited.envelope = decode(data, max_size=p.max_message_size)
            waited.handler = p.handlers.get(type(waited.envelope.body))
            if waited.handler is not None:
                waited.key = waited.handler.store_key(waited.envelope)
                waited.dedup = waited.handler.deduplicates(waited.envelope)
            else:
                waited.key = waited.envelope.session_id
            waited.extra[_DRAINED] = True
            await p.process(waited)
            if not settler.done:
                event.hand_back()  # it was handed back (shutting down): it stays first in line
                return

    async def _forget(self, event: Event, envelope_id: str) -> None:
        def drop(approvals: Approvals) -> bool:
            before = len(approvals.waiting)
            approvals.waiting = [
                t for t in approvals.waiting if decode(t.encode()).id != envelope_id
            ]
            return len(approvals.waiting) != before

        await self._change(event, drop, f"{envelope_id}#waited")

    # --- the decision's answer and the timeout ----------------------------------------------

    async def _answer_caller(
        self, event: Event, decision: Approval | Cancel, result: ResultEvent
    ) -> None:
        """Send the resumed turn's answer to the paused request's own caller too."""
        p = self._p
        approvals = approval_state.read(await p.store.load_state(event.key))
        call_id = decision.call_id if isinstance(decision, Approval) else None
        made = approvals.decision(decision.request_id, call_id)
        if made is None or made.answer != msgspec.json.encode(result).decode():
            return  # not this decision's answer (a cancel of a request that was not paused)
        caller = made.caller
        assert event.envelope is not None
        original = _caller_envelope(caller, event.envelope.session_id)
        if original.reply_to is None:
            return
        stand_in = Event(b"", event.settler, envelope=original)
        await p.publish_reply(stand_in, p.encode_reply(original, result))
        if p.timers is not None:  # the timeout's denial, if it is parked in a timer here
            for key in list(approvals.decided):
                if key.startswith(f"{decision.request_id}:"):
                    call_id = key.split(":", 1)[1]
                    denial = denial_id(event.envelope.session_id, decision.request_id, call_id)
                    await p.timers.cancel(delayed.timer_key(denial))

    async def _schedule_timeout(self, envelope: Envelope, result: ResultEvent) -> None:
        """Publish the pause's denial now, due at its expiry (`not_before`)."""
        approval = result.approval
        assert approval is not None
        if approval.expires_at is None:
            return
        p, now = self._p, time.time()
        denial = Envelope(
            id=denial_id(envelope.session_id, result.request_id, approval.call_id),
            session_id=envelope.session_id,
            key=envelope.key,
            body=Approval(
                request_id=result.request_id,
                call_id=approval.call_id,
                approved=False,  # the reason is the timeout's, whatever it says (see choose)
            ),
            created_at=now,
            not_before=approval.expires_at,
        )
        queue = p.topology.route(denial)
        wait = approval.expires_at - now
        if wait > 0 and p.broker.max_delay > 0:  # held by the broker: no round trip to park it
            await p.broker.publish(queue, encode(denial), delay=min(wait, p.broker.max_delay))
        else:
            await p.broker.publish(queue, encode(denial))


def _caller_envelope(caller: Caller, session_id: str) -> Envelope:
    trace = None
    if caller.traceparent:
        trace = TraceContext(traceparent=caller.traceparent, tracestate=caller.tracestate)
    return Envelope(
        id=caller.request_id,
        session_id=session_id,
        key=caller.key,
        correlation_id=caller.correlation_id,
        reply_to=caller.reply_to,
        body=Approval(request_id=caller.request_id, approved=False),  # routing only
        trace=trace,
    )


class _WaitedSettler:
    """Settles a turn that waited in the store: done once it is out of the waiting list."""

    def __init__(self, owner: ApprovalPauses, event: Event, data: bytes) -> None:
        self.owner, self.event, self.data = owner, event, data
        self.done = False

    def _id(self) -> str:
        return decode(self.data).id

    async def ack(self) -> None:
        await self.owner._forget(self.event, self._id())
        self.done = True

    async def hand_back(self) -> None:
        return None

    async def dead_letter(
        self, reason: str, envelope_id: str | None, session_id: str | None
    ) -> None:
        p = self.owner._p
        record = DeadLetter(
            reason=reason,
            queue=self.event.queue or "",
            payload=self.data,
            failed_at=time.time(),
            envelope_id=envelope_id,
            session_id=session_id,
        )
        await p.broker.publish(p.topology.dead_letter_queue, encode_dead_letter(record), sign=False)
        await self.ack()


__all__ = ["ApprovalPauses", "denial_id"]
