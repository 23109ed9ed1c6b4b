"""Stages that decide an event without running it: unsupported, already handled, too late,
started too often."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from agentqueue.workers.pipeline.event import Event, Next

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")


class Supported:
    """Dead-letters events of a type this worker has no handler for."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        if event.handler is None:
            assert event.envelope is not None
            event.dead_letter(f"this worker does not handle {event.envelope.type!r} events")
            return
        await call_next(event)


async def answer_from_store(pipeline: Pipeline, event: Event) -> bool:
    """If the event was handled before, decide to answer it from the stored reply."""
    assert event.envelope is not None
    if not event.dedup:
        return False
    stored = await pipeline.store.handled(event.key, event.envelope.id)
    if stored is None:
        return False
    log.info("event %s was handled before; answering from the stored reply", event.envelope.id)
    event.ack(stored)
    event.reply_stored = True
    return True


class Dedup:
    """Answers a redelivered event from the reply stored with its effect, never running it again."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        if not await answer_from_store(self.pipeline, event):
            await call_next(event)


class Deadline:
    """Does not start an event past its deadline; its caller is told `timed_out`."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        assert envelope is not None
        if envelope.deadline is not None and time.time() >= envelope.deadline:
            waited = time.time() - envelope.created_at if envelope.created_at else 0.0
            error = f"deadline passed before the event started (it waited {waited:.1f} s)"
            event.ack(self.pipeline.failure_reply(event, "timed_out", error))
            return
        await call_next(event)


class CountRuns:
    """Counts, in the session store, the runs of an event that started and never finished.

    Not the broker's redeliveries: an event prefetched by a worker that died before starting
    it, or one that waited in a batch while its instance was killed running another event, did
    nothing wrong. A commit clears the count, so only runs cut short by a crash add up.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.store = pipeline.store

    async def __call__(self, event: Event, call_next: Next) -> None:
        assert event.envelope is not None
        if event.runs == 0:  # once per delivery: a lost lease runs it again inside this one
            event.runs = await self.store.count_attempt(event.key, event.envelope.id)
        await call_next(event)


class DeliveryLimit:
    """Dead-letters an event whose runs kept dying unfinished (it keeps killing workers)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.limit = pipeline.delivery_limit

    async def __call__(self, event: Event, call_next: Next) -> None:
        if event.runs > self.limit:
            event.dead_letter(
                f"delivered {event.runs} times without being settled"
                " (a worker probably crashed while handling it)"
            )
            return
        await call_next(event)
