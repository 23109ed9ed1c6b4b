"""The event pipeline: what every stage shares, the two chains, and how replies go out.

Every event passes two chains of layers (see `stages.py` for the list):

- `receive`, on arrival: size, admission middleware (signatures), strict decode, routing.
  Its verdict is an admitted, routed event, a refusal, or a control event already acted on.
- `process`, in the event's session lane: middleware, then settle, dedup, deadline, delivery
  limit, lease, commit and run. It ends with the message settled exactly once.

A local worker and the Function Compute handler build the same pipeline; they differ only in
how a message is settled (`Settler`). Both count an event's unfinished runs in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack

import anyio

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerConnectionError, BrokerError, QueueMissing
from agentqueue.broker.topology import Topology
from agentqueue.protocol.codec import encode, encode_dead_letter
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import AgentRequest, Body, DeadLetter, Envelope, ResultEvent
from agentqueue.workers.handling import Handler, RunControl, failure_body
from agentqueue.workers.pipeline.event import Event, Layer, Next
from agentqueue.workers.pipeline.middleware import Middleware, overrides
from agentqueue.workers.pipeline.stages import process_chain, receive_chain
from agentqueue.workers.pipeline.stream import Emitter, Stream
from agentqueue.workers.refusal import answer_refused
from agentqueue.workers.retry import RetryPolicy
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.timers import Timers

log = logging.getLogger("agentqueue.worker")

REPLY_GRACE = 10.0  # how long a reply waits for its queue to come back (its owner reconnecting)
GONE_FOR = 30.0  # after a reply queue stayed missing, its stream deltas are dropped this long


class Pipeline:
    """The stages of one worker (or FC instance) and what they share."""

    def __init__(
        self,
        broker: Broker,
        store: SessionStore,
        handlers: dict[type, Handler],
        *,
        topology: Topology,
        worker_id: str,
        middleware: Sequence[Middleware] = (),
        retry: RetryPolicy | None = None,
        lease_ttl: float = 30.0,
        delivery_limit: int = 20,
        max_message_size: int,
        reply_grace: float = REPLY_GRACE,
        timers: Timers | None = None,
    ) -> None:
        self.broker, self.store, self.handlers = broker, store, handlers
        self.topology, self.worker_id = topology, worker_id
        self.middleware = list(middleware)
        self.retry = retry or RetryPolicy()
        self.lease_ttl, self.delivery_limit = lease_ttl, delivery_limit
        self.max_message_size, self.reply_grace = max_message_size, reply_grace
        # Where delayed requests and approval timeouts wait (None: FC, whose broker delays).
        self.timers = timers
        self.running: dict[str, RunControl] = {}  # request id -> its running handler
        # request id -> its open stream, whose numbering every reply to it takes (a middleware
        # that keeps streams opens and closes them; see `stream.py`)
        self.streams: dict[str, Stream] = {}
        self.accepting = True  # False once shutting down: unstarted events are handed back
        self._stop_early: dict[str, tuple[str, bool, float]] = {}  # id -> reason, discard, at
        self._gone: dict[str, float] = {}  # reply queue -> when it was last found missing
        # reply queue -> stored answers waiting for it to come back (see `answer_later`)
        self._late: dict[str, list[tuple[float, Event, bytes]]] = {}
        self._late_tasks: set[asyncio.Task[None]] = set()
        self._publishing = [m for m in self.middleware if overrides(m, "publishing")]
        self._retrying = [m for m in self.middleware if overrides(m, "retrying")]
        self._dead_lettering = [m for m in self.middleware if overrides(m, "dead_lettering")]
        self._abandoning = [m for m in self.middleware if overrides(m, "abandoned")]
        for m in self.middleware:
            m.bind(self)
        # Admit and route an arrived event (then see `Event.refusal` and `Event.decided`).
        self.receive: Next = _chain(receive_chain(self))
        # Handle an admitted event in its session lane, and settle it: one chain per envelope
        # type, each without the middleware that leaves that type alone.
        self._chains: dict[str | None, Next] = {}

    def processor(self, event: Event) -> Next:
        """The chain that handles an admitted event of this type in its lane, and settles it."""
        kind = event.envelope.type if event.envelope is not None else None
        chain = self._chains.get(kind)
        if chain is None:
            chain = self._chains[kind] = _chain(process_chain(self, kind))
        return chain

    async def process(self, event: Event) -> None:
        """Handle an admitted event in its session lane, and settle it."""
        await self.processor(event)(event)

    # --- control -------------------------------------------------------------------------

    def cancel(self, request_id: str) -> bool:
        """Interrupt a running request, or remember to cancel it when it starts."""
        return self.interrupt(request_id, "cancelled")

    def interrupt(self, request_id: str, reason: str, *, discard_state: bool = False) -> bool:
        """Stop a running request with `reason` (True), or stop it as soon as it starts."""
        control = self.running.get(request_id)
        if control is not None:
            control.interrupt(reason, discard_state=discard_state)
            return True
        now = time.monotonic()
        self._stop_early = {k: v for k, v in self._stop_early.items() if now - v[2] < 600}
        self._stop_early[request_id] = (reason, discard_state, now)
        return False

    def control_for(self, envelope: Envelope) -> RunControl:
        """A fresh `RunControl` for one run of `envelope`, already stopped if asked to be."""
        control = RunControl()
        early = self._stop_early.pop(envelope.id, None)
        if early is not None:
            control.interrupt(early[0], discard_state=early[1])
        return control

    def abandon(self, event: Event) -> None:
        """The runtime hands `event` back unrun (it is letting its queue go): tell middleware."""
        for middleware in self._abandoning:
            middleware.abandoned(event)

    # --- replies -------------------------------------------------------------------------

    def encode_reply(self, envelope: Envelope, body: Body) -> bytes:
        """The reply envelope answering `envelope`, encoded; a result of an open stream not
        numbered yet takes its next number."""
        if isinstance(body, ResultEvent) and body.seq == 0:
            stream = self.streams.get(envelope.id)
            if stream is not None:
                body = stream.number(body)
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

    def failure_reply(self, event: Event, kind: str, error: str) -> bytes:
        """The encoded `failed`/`timed_out`/`cancelled` answer to an event."""
        assert event.envelope is not None
        return self.encode_reply(event.envelope, failure_body(event.envelope, kind, error))

    def emitter(self, event: Event) -> Emitter:
        """How a handler streams deltas: to the request's open stream (kept for attachers)
        and to the caller if it streams; a no-op for a request that does not stream."""
        envelope = event.envelope
        assert envelope is not None
        body = envelope.body
        if not (isinstance(body, AgentRequest) and body.stream):
            return Emitter(self, event, None, publish=False)
        stream = self.streams.get(envelope.id) or Stream(envelope.id)
        return Emitter(self, event, stream, publish=envelope.reply_to is not None)

    async def publish_reply(self, event: Event, reply: bytes, *, delta: bool = False) -> bool:
        """Publish to the event's `reply_to`, waiting up to the reply grace for a missing
        queue to come back; False when it stayed missing."""
        assert event.envelope is not None
        await self._keep_stream_answer(event)
        queue = event.envelope.reply_to
        if not queue:
            return True
        gone_at = self._gone.get(queue)
        if delta and gone_at is not None and time.monotonic() - gone_at < GONE_FOR:
            return False  # its owner is gone: a stream delta is not worth a wait per chunk
        give_up = self._give_up(event)
        pause = 0.25
        while True:
            sent = await self._try_publish(event, queue, reply)
            if sent is not None:
                return sent
            # The requester's queue is gone: it may be reconnecting (an exclusive queue is
            # declared again after a reconnect) or gone for good. Wait a little for it.
            if time.monotonic() + pause > give_up:
                log.warning(
                    "no one to answer %s: reply queue %r is missing", event.envelope.id, queue
                )
                self._gone[queue] = time.monotonic()
                return False
            await anyio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def publish_stored_reply(self, event: Event, reply: bytes) -> None:
        """Publish an answer kept in the store with its effect; a missing reply queue is
        waited for in the background (`answer_later`), so the event can be settled now."""
        assert event.envelope is not None
        await self._keep_stream_answer(event)
        queue = event.envelope.reply_to
        if queue and await self._try_publish(event, queue, reply) is None:
            self.answer_later(event, reply)

    async def _keep_stream_answer(self, event: Event) -> None:
        assert event.envelope is not None
        stream = self.streams.get(event.envelope.id)
        if stream is not None:
            # Kept before it is sent: an attacher is not kept waiting on a caller gone away.
            await stream.keep_answer()

    def answer_later(self, event: Event, reply: bytes) -> None:
        """Send a stored answer whose reply queue is missing if the queue comes back within
        the grace, the event already settled: the answer is in the store with its effect, so
        nothing is lost by not holding the event (and its session's lane) while waiting.

        Holding it was a livelock under kills: an answer to a dead agent worker's queue kept
        its tool call unacked for the whole grace, a tool worker killed in that time had the
        call redelivered, and the next one waited again. One task per queue tries its answers.
        """
        assert event.envelope is not None and event.envelope.reply_to
        queue = event.envelope.reply_to
        waiting = self._late.setdefault(queue, [])
        waiting.append((self._give_up(event), event, reply))
        if len(waiting) == 1:
            task = asyncio.get_running_loop().create_task(self._send_late(queue, waiting))
            self._late_tasks.add(task)
            task.add_done_callback(self._late_tasks.discard)

    async def _send_late(self, queue: str, waiting: list[tuple[float, Event, bytes]]) -> None:
        pause = 0.25
        try:
            while waiting:
                await anyio.sleep(pause)
                pause = min(pause * 2, 2.0)
                now = time.monotonic()
                for late in [late for late in waiting if late[0] < now]:
                    waiting.remove(late)
                    self._gone[queue] = now
                    log.warning(
                        "no one to answer %s: reply queue %r stayed missing (the answer is kept"
                        " in the store)",
                        late[1].envelope.id if late[1].envelope else "?",
                        queue,
                    )
                while waiting:
                    _, event, reply = waiting[0]
                    try:
                        sent = await self._try_publish(event, queue, reply)
                    except BrokerConnectionError:
                        break  # the broker is away: try again next round
                    if sent is None:
                        break  # still missing
                    waiting.pop(0)  # sent, or refused for good (logged)
        finally:
            self._late.pop(queue, None)

    def _give_up(self, event: Event) -> float:
        """When to stop waiting for `event`'s reply queue (monotonic): the grace or its deadline."""
        assert event.envelope is not None
        give_up = time.monotonic() + self.reply_grace
        if event.envelope.deadline is not None:
            give_up = min(give_up, time.monotonic() + event.envelope.deadline - time.time())
        return give_up

    async def _try_publish(self, event: Event, queue: str, reply: bytes) -> bool | None:
        """One attempt: True sent, False refused for good, None the queue is missing."""
        try:
            await self._publish(event, queue, reply)
            self._gone.pop(queue, None)
            return True
        except QueueMissing:
            return None
        except BrokerConnectionError:
            raise  # the broker is away: not the answer's fault, the event runs again
        except BrokerError as exc:
            # The broker refuses this queue for good (a name it does not take, a full
            # queue): waiting changes nothing, so the answer is kept elsewhere.
            assert event.envelope is not None
            log.warning("cannot answer %s on %r: %s", event.envelope.id, queue, exc)
            return False

    async def _publish(self, event: Event, queue: str, reply: bytes) -> None:
        if not self._publishing:
            await self.broker.publish(queue, reply)
            return
        with ExitStack() as stack:
            for middleware in self._publishing:
                stack.enter_context(middleware.publishing(event, queue, reply))
            await self.broker.publish(queue, reply)

    async def park_reply(self, event: Event, reply: bytes) -> None:
        """Keep an answer nobody could receive (and no store holds) on the dead-letter queue."""
        assert event.envelope is not None
        record = DeadLetter(
            reason=f"no one to answer: reply queue {event.envelope.reply_to!r} does not exist",
            queue=event.envelope.reply_to or "",
            payload=reply,
            failed_at=time.time(),
            envelope_id=event.envelope.id,
            session_id=event.envelope.session_id,
        )
        await self.broker.publish(
            self.topology.dead_letter_queue, encode_dead_letter(record), sign=False
        )

    # --- giving up -----------------------------------------------------------------------

    def notify_retry(self, event: Event, error: BaseException, attempt: int, delay: float) -> None:
        """Tell middleware that an attempt failed and another follows."""
        for middleware in self._retrying:
            middleware.retrying(event, error, attempt, delay)

    async def dead_letter(self, event: Event) -> None:
        """Dead-letter an admitted event with its reason, then answer its caller `failed`."""
        envelope = event.envelope
        assert envelope is not None
        log.error(
            "dead-lettering event %s of session %r: %s",
            envelope.id,
            envelope.session_id,
            event.reason,
            exc_info=event.error if isinstance(event.error, Exception) else None,
        )
        for middleware in self._dead_lettering:
            middleware.dead_lettering(event, event.reason)
        await event.settler.dead_letter(event.reason, envelope.id, envelope.session_id)
        await self.publish_reply(event, self.failure_reply(event, "failed", event.reason))

    async def refuse(self, event: Event) -> None:
        """Dead-letter bytes admission refused, and tell their caller when that is safe."""
        refused = event.refusal
        assert refused is not None
        log.error("refusing a message on %s: %s", event.queue or "?", refused.reason)
        await event.settler.dead_letter(refused.reason, refused.id, refused.session_id)
        await answer_refused(self.broker, refused)


def _chain(layers: Sequence[Layer]) -> Next:
    """Bind layers `async (event, call_next)` into one `async (event)`, first layer outermost."""

    async def end(event: Event) -> None:
        return None

    call: Next = end
    for layer in reversed(layers):
        call = _bind(layer, call)
    return call


def _bind(layer: Layer, call_next: Next) -> Next:
    async def call(event: Event) -> None:
        await layer(event, call_next)

    return call
