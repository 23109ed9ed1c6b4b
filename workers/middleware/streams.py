"""Keeps the result events of streaming requests where any process can attach to them."""

from __future__ import annotations

import logging

import anyio

from agentqueue.protocol.codec import decode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import AgentRequest, ResultEvent
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.pipeline.pipeline import Pipeline
from agentqueue.workers.pipeline.stream import Stream
from agentqueue.workers.stream_log import StreamLog

log = logging.getLogger("agentqueue.worker")


class KeepStreams(Middleware):
    """Opens the stream of each streaming request in its log (numbering on from what is kept)
    and runs its writer; its deltas and its terminal event are kept as they are sent
    (`Pipeline.publish_reply`, also without a reply queue), a stored answer that a redelivery
    is answered with once it is settled.

    It wraps the settlement, so every answer the pipeline encodes for the request — the final,
    a dead letter's `failed`, a `timed_out` — is numbered in the same stream.
    """

    processes = frozenset({"agent_request"})  # process() passes other events straight on

    wraps_settlement = True

    def __init__(self, stream_log: StreamLog) -> None:
        self.log = stream_log
        self._pipeline: Pipeline | None = None

    def bind(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def process(self, event: Event, call_next: Next) -> None:
        envelope, p = event.envelope, self._pipeline
        assert envelope is not None and p is not None
        if not (isinstance(envelope.body, AgentRequest) and envelope.body.stream):
            await call_next(event)
            return
        seq, attempt = await self.log.open(envelope.id)
        stream = Stream(envelope.id, log=self.log, seq=seq, attempt=attempt)
        p.streams[envelope.id] = stream
        try:
            async with anyio.create_task_group() as writing:
                writing.start_soon(stream.write)
                try:
                    await call_next(event)
                    # An answer sent was kept as it was sent (`Pipeline.publish_reply`); one
                    # answered from the store (a redelivery) is kept here, and one numbered
                    # but never sent (its commit lost the lease: run again) not at all.
                    if stream.answer is None and event.outcome == "ack" and event.reply:
                        await stream.keep_answer(_stored_answer(event.reply))
                finally:
                    p.streams.pop(envelope.id, None)
                    stream.close()
        except BaseExceptionGroup as group:
            # The runtimes report what escaped by its own type and text, not as a group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise


def _stored_answer(reply: bytes) -> ResultEvent | None:
    try:
        body = decode(reply).body
    except ProtocolError as exc:  # our own bytes: cannot happen unless the store was altered
        log.warning("the stored answer is not an envelope (%s); it is not kept for attach", exc)
        return None
    return body if isinstance(body, ResultEvent) and body.terminal else None
