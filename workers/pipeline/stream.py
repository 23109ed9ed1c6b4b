"""One request's stream of result events: numbered across attempts, kept for attachers.

`seq` counts every event of the request — deltas, restart markers and the terminal event —
across attempts, so a retried attempt goes on numbering instead of starting again at 1 (which
made a reader that drops repeated numbers splice two attempts' deltas together). Each attempt
after the first opens with a restart marker: an empty `delta` with `restart=True` and the new
`attempt`. The worker that runs a request takes the numbering up where the request's log left
off, so a redelivery to another worker numbers on too.

Deltas are written behind: `keep` queues an event and a writer task (`write`, owned by the
middleware that opened the stream) writes what is queued in one batch per store round trip,
in order, so a handler never waits on the store per delta. The writer lingers `LINGER`
seconds after the first event of a batch so that a fast stream costs a few round trips, not
one per token; an attacher sees a delta at most that much later than the caller. The
terminal event is written through (`keep_answer` waits for everything queued), before it is
sent and the request acked.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agentqueue.protocol.messages import ResultEvent
from agentqueue.workers.stream_log import Kept, StreamLog

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.event import Event
    from agentqueue.workers.pipeline.pipeline import Pipeline

LINGER = 0.01  # seconds the writer waits for more events before writing a batch


class Stream:
    """The numbering of one request's events, and the log they are kept in (if any)."""

    def __init__(
        self, request_id: str, *, log: StreamLog | None = None, seq: int = 0, attempt: int = 0
    ) -> None:
        self.request_id, self.log = request_id, log
        self.seq, self.attempt = seq, attempt
        self.answer: ResultEvent | None = None  # the terminal event, once numbered
        self._answer_kept = False
        # Only a stream with a log has a queue (and a writer, which closes it).
        self._send: MemoryObjectSendStream[Kept] | None = None
        self._receive: MemoryObjectReceiveStream[Kept] | None = None
        if log is not None:
            self._send, self._receive = anyio.create_memory_object_stream[Kept](math.inf)
        self._queued = self._written = seq  # the newest seq queued, and written
        self._wrote = anyio.Event()
        self._hurry = anyio.Event()  # set when someone waits for the writes: no lingering

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
        """Keep the terminal event once (`answer`: one numbered elsewhere, e.g. stored),
        returning when it and everything before it is written."""
        answer = answer or self.answer
        if answer is None:
            return  # deltas are written behind, never waited for
        if not self._answer_kept:
            self._answer_kept = True
            self.keep(answer)
        await self.flush()

    async def flush(self) -> None:
        """Return once everything queued is written."""
        self._hurry.set()
        while self._written < self._queued:
            await self._wrote.wait()

    def keep(self, event: ResultEvent) -> None:
        """Queue `event` for the request's log (when there is one); `write` writes it."""
        if self._send is not None:
            self._queued = max(self._queued, event.seq)
            self._send.send_nowait(Kept.of(event))

    def close(self) -> None:
        """No more events: `write` ends once it wrote what is queued."""
        self._hurry.set()
        if self._send is not None:
            self._send.close()

    async def write(self) -> None:
        """Write queued events to the log in order, each batch in one round trip, until
        `close`. A store error ends it (and its owner's task group) with that error."""
        assert self.log is not None and self._receive is not None
        async with self._receive:
            async for first in self._receive:
                with anyio.move_on_after(LINGER):
                    await self._hurry.wait()
                batch = [first]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self.log.append_many(self.request_id, batch)
                self._written = batch[-1].seq
                self._wrote.set()
                self._wrote = anyio.Event()
                if self._written >= self._queued:  # else a flush still waits: no lingering
                    self._hurry = anyio.Event()


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
            # Written through, like the answer: an attacher that finds the new attempt's
            # first deltas kept finds its marker before them, so it skips the void ones.
            self.stream.keep(marker)
            await self.stream.flush()
            await self._publish(marker)

    async def _send(self, delta: ResultEvent) -> None:
        # Queued for the log first: whatever a caller sees is written, in order.
        assert self.stream is not None
        self.stream.keep(delta)
        await self._publish(delta)

    async def _publish(self, delta: ResultEvent) -> None:
        assert self.event.envelope is not None
        if self.publish:
            reply = self.pipeline.encode_reply(self.event.envelope, delta)
            await self.pipeline.publish_reply(self.event, reply, delta=True)
