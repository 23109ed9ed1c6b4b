"""The settle stage: carry out what the stages decided, so every event ends settled once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentqueue.workers.errors import Refused
from agentqueue.workers.pipeline.event import Event, Next

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")


class Settle:
    """Reply, then ack; hand back; or dead-letter and answer `failed`.

    An answer kept in the store whose reply queue is missing is acked at once and sent if the
    queue comes back within the grace (`Pipeline.answer_later`); one kept nowhere waits for
    its queue before the ack, and is parked on the dead-letter queue if it stays missing.

    A `Refused` raised inside (by a middleware) dead-letters the event with its reason. Any
    other exception leaves the message unsettled and propagates: the consumer then hands the
    message back to the broker, so an error never loses an event.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        try:
            await call_next(event)
        except Refused as exc:
            event.dead_letter(str(exc), exc)
        p = self.pipeline
        if event.outcome == "ack":
            if event.reply is not None:
                await self._answer(event, event.reply)
            await event.settler.ack()
        elif event.outcome == "hand_back":
            await event.settler.hand_back()
        elif event.outcome == "dead_letter":
            await p.dead_letter(event)
        else:
            envelope_id = event.envelope.id if event.envelope else "?"
            raise RuntimeError(f"the pipeline left event {envelope_id} undecided")

    async def _answer(self, event: Event, reply: bytes) -> None:
        p = self.pipeline
        if event.reply_stored:
            await p.publish_stored_reply(event, reply)  # a missing queue is waited for later
        elif not await p.publish_reply(event, reply):
            await p.park_reply(event, reply)  # visible in `dlq list`, not lost
