"""What the ingress keeps of each request it accepted, and how it streams them: the result
cache (forgotten `retention` seconds after a request ends) and the Server-Sent Events frames."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from agentqueue.ingress.requests import IngressError
from agentqueue.protocol.messages import ResultEvent

KEEPALIVE = 15.0  # seconds between SSE comments, so idle proxies keep the stream open
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Tracked:
    """What the ingress knows about one request: its events so far and whether it ended."""

    id: str
    session_id: str
    events: list[ResultEvent] = field(default_factory=list)
    final: ResultEvent | None = None
    finished_at: float | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    def add(self, event: ResultEvent) -> None:
        """Record an event and wake everyone streaming this request."""
        self.events.append(event)
        if event.terminal:
            self.final = event
            self.finished_at = time.monotonic()
        self.changed.set()
        self.changed = anyio.Event()

    def to_dict(self) -> dict[str, Any]:
        """The request's status for `GET /v1/requests/{id}`."""
        final = self.final
        text = final.text if final is not None else "".join(e.text for e in self.events)
        return {
            "id": self.id,
            "session_id": self.session_id,
            "status": final.kind if final is not None else "pending",
            "text": text,
            "error": final.error if final is not None else None,
            "output": msgspec.to_builtins(final.output) if final and final.output else None,
            "worker": final.worker if final is not None else None,
            "usage": msgspec.to_builtins(final.usage) if final and final.usage else None,
        }


class ResultCache:
    """Tracked requests by id; finished ones are forgotten `retention` seconds after they end."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.pending = 0  # tracked and not yet finished
        self._entries: OrderedDict[str, Tracked] = OrderedDict()
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> finish time, in order

    def add(self, request_id: str, session_id: str) -> Tracked:
        """Start tracking a request."""
        self.purge()
        entry = self._entries[request_id] = Tracked(request_id, session_id)
        self.pending += 1
        return entry

    def finished(self, entry: Tracked) -> None:
        """Start the retention clock of a request that ended."""
        self.pending -= 1
        self._finished[entry.id] = entry.finished_at or time.monotonic()

    def get(self, request_id: str) -> Tracked | None:
        """A tracked request, or None when unknown or past its retention."""
        self.purge()
        return self._entries.get(request_id)

    def purge(self) -> None:
        """Forget requests that finished more than `retention` seconds ago."""
        cutoff = time.monotonic() - self.retention
        while self._finished:
            request_id, finished = next(iter(self._finished.items()))
            if finished > cutoff:
                break
            del self._finished[request_id]
            self._entries.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._entries)


def last_event_id(header: str | None) -> int:
    """The seq a reconnecting client saw last (`Last-Event-ID`), 0 for none."""
    if header is None or not header.strip():
        return 0
    if not header.strip().isdigit():
        raise IngressError(
            400,
            f"Last-Event-ID {header[:40]!r} is not an event id of this stream; send the id of"
            " the last event received (a whole number), or none to start from the beginning",
        )
    return int(header)


def _frame(event: ResultEvent, fallback_id: int) -> bytes:
    data = _encoder.encode(event)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        event.seq or fallback_id,  # seq 0: a worker older than seq numbers across attempts
        event.kind.encode(),
        data,
    )


def _resumed(events: list[ResultEvent], after: int) -> int:
    """Where a stream resumed after `after` starts in `events`: past what was seen, and at the
    newest restart marker if one came since (an earlier attempt's deltas are void)."""
    start = next((i for i, e in enumerate(events) if (e.seq or i + 1) > after), len(events))
    restarts = [i for i in range(start, len(events)) if events[i].restart]
    return restarts[-1] if restarts else start


async def sse(entry: Tracked, after: int = 0) -> AsyncIterator[bytes]:
    """The tracked request's events as SSE frames after `after`, then each as it comes."""
    sent = _resumed(entry.events, after) if after else 0
    while True:
        changed = entry.changed
        while sent < len(entry.events):
            event = entry.events[sent]
            sent += 1
            yield _frame(event, sent)
        if entry.final is not None:
            return
        with anyio.move_on_after(KEEPALIVE) as scope:
            await changed.wait()
        if scope.cancelled_caught:
            yield b": keep-alive\n\n"


async def sse_kept(events: AsyncIterator[ResultEvent]) -> AsyncIterator[bytes]:
    """Kept events (of a request tracked elsewhere) as SSE frames."""
    async for event in events:
        yield _frame(event, event.seq)
