"""One request's stream of result events: numbered across attempts, kept for attachers.

`seq` counts every event of the request — deltas, restart markers and the terminal event —
across attempts, so a retried attempt goes on numbering instead of starting again at 1 (which
made a reader that drops repeated numbers splice two attempts' deltas together). Each attempt
after the first opens with a restart marker: an empty `delta` with `restart=True` and the new
`attempt`. The worker that runs a request takes the numbering up where the request's log left
off, so a redelivery to another worker numbers on too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from agentqueue.protocol.messages import ResultEvent
from agentqueue.workers.stream_log import Kept, StreamLog

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.event import Event
    from agentqueue.workers.pipeline.pipeline import Pipeline


class Stream:
    """The numbering of one request's events, and the log they are kept in (if any)."""

    def __init__(
        self, request_id: str, *, log: StreamLog | None = None, seq: int = 0, attempt: int = 0
    ) -> None:
        self.request_id, self.log = request_id, log
        self.seq, self.attempt = seq, attempt
        self.answer: ResultEvent | None = None  # the terminal event, once numbered
        self._answer_kept = False

    def number(self, event: ResultEvent) -> ResultEvent:
        """`event` with the next `seq` and this attempt."""
        self.seq += 1
        numbered = msgspec.structs.replace(event, seq=self.seq, attempt=max(1, self.attempt))
        if numbered.terminal:
            self.answer = numbered
        return numbered

    def begin_attempt(self) -> ResultEvent | None:
        """Count an attempt; the restart marker to send when it is not the first."""
        self.attempt += 1
        if self.attempt == 1:
            return None
        return self.number(ResultEvent(request_id=self.request_id, kind="delta", restart=True))

    async def keep_answer(self, answer: ResultEvent | None = None) -> None:
        """Keep the terminal event once (`answer`: one numbered elsewhere, e.g. stored)."""
        answer = answer or self.answer
        if answer is not None and not self._answer_kept:
            await self.keep(answer)
            self._answer_kept = True

    async def keep(self, event: ResultEvent) -> None:
        """Write `event` to the request's log, when there is one."""
        if self.log is not None:
            await self.log.append(self.request_id, Kept.of(event))


class Emitter:
    """How a handler streams deltas: numbered, kept in the request's log, then published to
    the caller (when it asked for a stream and has a reply queue)."""

    def __init__(
        self, pipeline: Pipeline, event: Event, stream: Stream | None, publish: bool
    ) -> None:
        self.pipeline, self.event = pipeline, event
        self.stream, self.publish = stream, publish

    async def __call__(self, text: str) -> None:
        """Send one delta of the answer."""
        if self.stream is None:
            return
        delta = ResultEvent(request_id=self.stream.request_id, kind="delta", text=text)
        await self._send(self.stream.number(delta))

    async def begin_attempt(self) -> None:
        """A run of the handler begins: after the first, send the restart marker."""
        if self.stream is None:
            return
        marker = self.stream.begin_attempt()
        if marker is not None:
            await self._send(marker)

    async def _send(self, delta: ResultEvent) -> None:
        # Kept first: whatever a caller has seen, an attacher can replay.
        assert self.stream is not None and self.event.envelope is not None
        await self.stream.keep(delta)
        if self.publish:
            reply = self.pipeline.encode_reply(self.event.envelope, delta)
            await self.pipeline.publish_reply(self.event, reply, delta=True)
