"""Route replies on one reply queue to whoever waits for them, by correlation id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

from agentqueue.broker.base import Broker, Delivery
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.metrics import instruments
from agentqueue.protocol.admission import Refusal, admit
from agentqueue.protocol.messages import Envelope, ResultEvent

log = logging.getLogger("agentqueue.replies")


class ReplyRouter:
    """Consumes a reply queue and hands each envelope to the inbox of its correlation id.

    Replies are delivered at least once: a terminal `ResultEvent` is passed on once per
    correlation id and stream deltas once per `(attempt, seq)`, so a redelivered reply never
    reaches a caller twice while a retried attempt's deltas (and its restart marker) always
    do, never mistaken for repeats of the attempt before. Replies nobody waits for go to
    `on_unmatched`, or are dropped.
    A reply that fails admission (unsigned or forged while the broker has keys, undecodable)
    is dropped and counted in `refused`.
    """

    def __init__(
        self,
        broker: Broker,
        queue: str,
        *,
        prefetch: int = 256,
        on_unmatched: Callable[[Envelope], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = prefetch
        self.on_unmatched = on_unmatched
        self._inboxes: dict[str, asyncio.Queue[Envelope]] = {}
        self._seen_seq: dict[str, set[tuple[int, int]]] = {}
        self.refused = 0  # replies dropped because they failed admission

    def expect(self, correlation_id: str) -> asyncio.Queue[Envelope]:
        """Open the inbox for one correlation id (before publishing the request)."""
        inbox: asyncio.Queue[Envelope] = asyncio.Queue()
        self._inboxes[correlation_id] = inbox
        self._seen_seq[correlation_id] = set()
        return inbox

    def forget(self, correlation_id: str) -> None:
        """Close the inbox; later replies for it are treated as unmatched."""
        self._inboxes.pop(correlation_id, None)
        self._seen_seq.pop(correlation_id, None)

    @property
    def waiting(self) -> int:
        """How many correlation ids have an open inbox."""
        return len(self._inboxes)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled; signals `task_status` once subscribed."""
        async with await self.broker.consume(self.queue, prefetch=self.prefetch) as subscription:
            task_status.started()
            async for delivery in subscription:
                # Replies pass the same admission as events: signed by one of our keys (when
                # the broker has keys) and strictly decoded. No freshness window: a reply kept
                # in the store may rightly be sent again long after it was made (a redelivered
                # request answered from its stored result), and a stale copy of an answer
                # reaches no one, as each correlation id takes one terminal answer.
                verdict = admit(delivery.body, self.broker.signing, window=None)
                if isinstance(verdict, Refusal):
                    self._refuse(verdict)
                    await self._settle(delivery)
                    continue
                await self._route(verdict)
                await self._settle(delivery)

    async def _settle(self, delivery: Delivery) -> None:
        try:
            await delivery.ack()
        except BrokerConnectionError as exc:
            # The connection dropped under it: the broker hands the reply out again and the
            # second copy is dropped. Keep consuming (it reconnects).
            log.info("reply on %s left un-acked: %s", self.queue, exc)

    def _refuse(self, refused: Refusal) -> None:
        # Dropped, not dead-lettered: no one is owed a forged or unsigned reply. Counted and
        # logged, so a flood of them (or a key missing from this ring) shows.
        self.refused += 1
        log.warning(
            "dropping a reply on %s that failed admission (%s refused so far): %s",
            self.queue,
            self.refused,
            refused.reason,
        )
        meters = instruments()
        if meters is not None:
            meters.refused_replies.add(1, {"messaging.destination.name": self.queue})

    async def _route(self, envelope: Envelope) -> None:
        key = envelope.correlation_id or ""
        inbox = self._inboxes.get(key)
        if inbox is None:
            if self.on_unmatched is not None:
                await self.on_unmatched(envelope)
            return
        body = envelope.body
        if isinstance(body, ResultEvent) and not body.terminal:
            # Workers number a request's events on across attempts; the attempt is in the key
            # too, so even a worker that numbers each attempt from 1 has its retry delivered.
            seen, mark = self._seen_seq[key], (body.attempt, body.seq)
            if mark in seen:
                return
            seen.add(mark)
        inbox.put_nowait(envelope)
        if not isinstance(body, ResultEvent) or body.terminal:
            # One terminal answer per id: a redelivered duplicate finds no inbox and is dropped.
            self.forget(key)
