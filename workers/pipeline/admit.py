"""The receiving stages: size, strict decode, routing. Bytes that fail one go no further."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentqueue.protocol.admission import Refusal, admit, refusal
from agentqueue.protocol.messages import Cancel
from agentqueue.workers.pipeline.event import Event, Next

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")


class SizeLimit:
    """Refuses a message over the size limit before anything reads it."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.limit = pipeline.max_message_size
        # Signed bytes this large are never verified, so the caller they name is not trusted.
        self.answerable = pipeline.broker.signing is None

    async def __call__(self, event: Event, call_next: Next) -> None:
        size = len(event.data)
        if size > self.limit:
            reason = (
                f"message is {size} bytes, over the {self.limit} byte limit;"
                " send large inputs by reference (a URL) instead"
            )
            event.refuse(refusal(event.data, reason, field="$", answerable=self.answerable))
            return
        await call_next(event)


class Decode:
    """Strictly decodes the envelope (unless an admission middleware has: bytes are decoded
    once); a wrong type or field is refused naming the field."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.limit = pipeline.max_message_size

    async def __call__(self, event: Event, call_next: Next) -> None:
        if event.envelope is None:
            verdict = admit(event.data, max_size=self.limit)
            if isinstance(verdict, Refusal):
                event.refuse(verdict)
                return
            event.envelope = verdict
        await call_next(event)


class Route:
    """Acts on control events at once; gives every other event its handler and session lane.

    The innermost receiving layer: admission middleware has checked signature and freshness
    before a control event is acted on, and sees the routed event after `call_next`.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        assert envelope is not None
        if isinstance(envelope.body, Cancel):
            found = self.pipeline.cancel(envelope.body.request_id)
            state = "running" if found else "not running yet"
            log.info("cancel of %s (%s)", envelope.body.request_id, state)
            paused_here = self.pipeline.handlers.get(Cancel)
            if found or paused_here is None:
                event.ack()
                await event.settler.ack()
                return
            # Not running: it may be paused waiting for approval, which only the session's
            # lane can see (in the store), so the cancel goes there, in order.
            event.handler, event.key = paused_here, paused_here.store_key(envelope)
            event.dedup = paused_here.deduplicates(envelope)
            await call_next(event)
            return
        handler = self.pipeline.handlers.get(type(envelope.body))
        event.handler = handler
        if handler is None:
            event.key = envelope.session_id  # refused in its lane, after the session's events
        else:
            # The store key: tool calls never queue behind the agent turn waiting for them.
            event.key = handler.store_key(envelope)
            event.dedup = handler.deduplicates(envelope)
        await call_next(event)
