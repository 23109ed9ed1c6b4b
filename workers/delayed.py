"""Delayed requests: an envelope with `not_before` in the future waits outside its session's
order until it is due, then joins the tail of its partition queue like a new request.

Where it waits depends on the broker:

- a broker that can hold a message back itself (MNS, `DelaySeconds`, up to 7 days) is asked to:
  the client publishes with the delay, and an envelope that arrives early anyway (a longer
  delay, a clock ahead of the publisher's) is published again with the time left;
- otherwise (RabbitMQ, memory) the worker that receives it parks it as a timer in the session
  store's backend (`workers/timers.py`) and only then acks the delivery; the timer publishes
  it again when due, and is deleted only after the broker confirmed that publish.

Either way the request is durable at every moment (in the broker's queue, or in the store
before the queue lets it go), so it survives a broker restart and any worker's death. A copy
published twice (a worker dying between publishing and deleting the timer) carries the same
envelope id, and the dedup stage answers it from the stored result instead of running it again.
A re-published copy is stamped `created_at` now, so it is fresh, and new bytes for the replay
window, when envelopes are signed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from agentqueue.protocol.admission import refused_envelope
from agentqueue.protocol.codec import decode, encode
from agentqueue.protocol.messages import Envelope
from agentqueue.workers.timers import Action, Fired, Timer, Timers

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.event import Event, Next
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")

KIND = "request"  # the timer kind of a parked request
EARLY = 0.001  # seconds early an envelope may run (float rounding between clocks of one host)


def timer_key(envelope_id: str) -> str:
    """The timer a parked request waits in: one per envelope id (a redelivery parks once)."""
    return f"request:{envelope_id}"


def fresh_copy(envelope: Envelope) -> bytes:
    """The envelope re-encoded to be published again: unsigned (the broker signs), dated now."""
    return encode(msgspec.structs.replace(envelope, created_at=time.time(), sig=None))


class Park:
    """The receiving stage that keeps a not-yet-due envelope out of its session's lane."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        assert envelope is not None
        wait = (envelope.not_before or 0.0) - time.time()
        if wait <= EARLY:
            await call_next(event)
            return
        broker, timers = self.pipeline.broker, self.pipeline.timers
        queue = self.pipeline.topology.route(envelope)
        if broker.max_delay > 0:
            await broker.publish(queue, fresh_copy(envelope), delay=min(wait, broker.max_delay))
            where = "the broker"
        elif timers is not None:
            parked = encode(msgspec.structs.replace(envelope, sig=None))
            await timers.schedule(timer_key(envelope.id), KIND, envelope.not_before or 0.0, parked)
            where = "a timer"
        else:  # a pipeline assembled without timers, on a broker that cannot delay
            reason = (
                f"request {envelope.id} is due in {wait:.0f} s, but this consumer has no timers"
                f" to hold it and {type(broker).__name__} cannot delay messages; serve it with"
                " `agentqueue worker`, which keeps delayed requests in its session store"
            )
            event.refuse(refused_envelope(envelope, reason, "$.not_before"))
            return
        log.info("request %s is due in %.1f s; it waits in %s", envelope.id, wait, where)
        event.ack()
        await event.settler.ack()


def fire_parked(pipeline: Pipeline) -> Action:
    """The timer action that publishes a parked request once it is due."""

    async def fire(timer: Timer) -> Fired:
        envelope = decode(timer.payload)
        queue = pipeline.topology.route(envelope)
        await pipeline.broker.publish(queue, fresh_copy(envelope))
        log.info("request %s is due: published to %s", envelope.id, queue)
        return None

    return fire


def register(timers: Timers, pipeline: Pipeline) -> None:
    """Fire parked requests on `timers`."""
    timers.register(KIND, fire_parked(pipeline))
