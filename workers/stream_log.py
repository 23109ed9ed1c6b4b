"""Where the result events of running and recently finished requests are kept, for attachers.

A worker writes every `ResultEvent` of a streaming request (its deltas, restart markers and its
terminal event) to the request's log in the namespace's session store, numbered by `seq`; any
process that reaches the same store reads it back and follows it live (`Client.attach`,
`agentqueue attach`, the ingress's SSE). The broker carries nothing extra, so RabbitMQ and MNS
behave the same: followers wait on the store — a blocking `XREAD` on Redis, a poll of the file
every `POLL` seconds on SQLite, an in-process wake-up in memory.

Bounds: a request's log keeps its last `max_events` events (setting `stream_events`) and is
deleted `retention` seconds after its last event (setting `stream_retention`). A request
becomes attachable when a worker starts it (its log is opened empty then).
"""

from __future__ import annotations

import abc
import importlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import msgspec

from agentqueue.broker.urls import redact_url
from agentqueue.protocol.messages import ResultEvent
from agentqueue.workers.errors import StreamNotKept
from agentqueue.workers.session_store import PURGE_EVERY

DEFAULT_STREAM_EVENTS = 10_000  # events kept per request, the newest
DEFAULT_STREAM_RETENTION = 3600.0  # seconds a request's log is kept after its last event
POLL = 0.05  # seconds between looks at a store that cannot block (SQLite)
WAIT = 1.0  # the longest one wait for new events blocks before looking whether the log is gone

_decoder = msgspec.json.Decoder(ResultEvent)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Kept:
    """One kept event: its place in the stream, its attempt and the encoded `ResultEvent`."""

    seq: int
    attempt: int
    data: bytes

    @classmethod
    def of(cls, event: ResultEvent) -> Kept:
        """The entry for `event`."""
        return cls(event.seq, event.attempt, _encoder.encode(event))

    def event(self) -> ResultEvent:
        """The kept `ResultEvent`."""
        return _decoder.decode(self.data)


class StreamLog(abc.ABC):
    """The kept events of requests, by request id; one writer per request (its session's lease
    holder), any number of readers in any process."""

    url: str
    max_events: int
    retention: float

    @abc.abstractmethod
    async def open(self, request_id: str) -> tuple[int, int]:
        """Start the request's log if new; its last `(seq, attempt)`, `(0, 0)` when empty."""

    @abc.abstractmethod
    async def append(self, request_id: str, kept: Kept) -> None:
        """Keep one event; an event with a `seq` kept before is ignored (a redelivery)."""

    async def append_many(self, request_id: str, kept: list[Kept]) -> None:
        """Keep several events, in order (one round trip where the store allows)."""
        for entry in kept:
            await self.append(request_id, entry)

    @abc.abstractmethod
    async def read(self, request_id: str, after: int) -> list[Kept] | None:
        """The kept events with `seq > after`, in order; None when the request has no log."""

    @abc.abstractmethod
    async def last(self, request_id: str) -> Kept | None:
        """The newest kept event (None: no log, or nothing kept yet)."""

    async def wait(self, request_id: str, after: int, timeout: float) -> list[Kept] | None:
        """Events with `seq > after`, waiting up to `timeout` s for one (empty: none came);
        None when the log is gone."""
        deadline = time.monotonic() + timeout
        while True:
            kept = await self.read(request_id, after)
            if kept is None or kept or time.monotonic() >= deadline:
                return kept
            await anyio.sleep(POLL)

    async def close(self) -> None:  # noqa: B027 - the memory log has nothing to close
        """Release connections."""


def not_kept(request_id: str, log: StreamLog) -> StreamNotKept:
    """The error for a request whose events are not kept."""
    return StreamNotKept(
        f"no events are kept for request {request_id[:200]!r}: it is unknown to the store"
        f" {redact_url(log.url)}, not started yet, or finished more than"
        f" {log.retention:.0f} s ago (setting stream_retention)"
    )


async def replay(log: StreamLog, request_id: str, after: int = 0) -> list[ResultEvent]:
    """What an attacher after `seq` `after` gets at once: the kept events since, from the
    newest restart marker among them if a retried attempt began (an earlier attempt's deltas
    are void), or the terminal event once more when everything was seen.

    Raises `StreamNotKept` when the request has no log, or when events after `after` were
    dropped for the count bound.
    """
    kept = await log.read(request_id, after)
    if kept is None:
        raise not_kept(request_id, log)
    if not kept:
        newest = await log.last(request_id)
        if newest is not None and newest.seq <= after and newest.event().terminal:
            return [newest.event()]  # everything was seen: the answer once more, to end on it
        return []
    events = [k.event() for k in kept]
    restarts = [i for i, e in enumerate(events) if e.restart]
    if restarts:
        return events[restarts[-1] :]
    if events[0].seq > after + 1:
        raise StreamNotKept(
            f"events {after + 1} to {events[0].seq - 1} of request {request_id[:200]!r} are no"
            f" longer kept (a request keeps its last {log.max_events}, setting stream_events);"
            f" attach with after={events[0].seq - 1} or later",
            first_kept=events[0].seq,
        )
    return events


async def follow(
    log: StreamLog, request_id: str, after: int = 0, *, timeout: float | None = None
) -> AsyncIterator[ResultEvent]:
    """The request's events after `seq` `after` (see `replay`), then each as it is kept, to
    the terminal one (or until `timeout` seconds passed: the iterator then ends without one).

    An attacher follows one attempt: a retried attempt shows as its restart marker, then its
    deltas, never spliced onto an earlier attempt's. Raises `StreamNotKept` as `replay` does,
    and when the log is deleted while followed.
    """
    seen = after
    for event in await replay(log, request_id, after):
        seen = event.seq
        yield event
        if event.terminal:
            return
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        wait = WAIT if deadline is None else max(0.0, min(WAIT, deadline - time.monotonic()))
        kept = await log.wait(request_id, seen, wait)
        if kept is None:
            raise not_kept(request_id, log)
        for entry in kept:
            if entry.seq <= seen:
                continue
            event = entry.event()
            seen = event.seq
            yield event
            if event.terminal:
                return


# --- in memory ------------------------------------------------------------------------------


@dataclass
class _Log:
    kept: list[Kept] = field(default_factory=list)
    attempt: int = 0
    written_at: float = 0.0
    changed: anyio.Event | None = None


_memory_logs: dict[str, dict[str, _Log]] = {}


class MemoryStreamLog(StreamLog):
    """Logs in this process's memory; logs opened on the same URL share them."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        max_events: int = DEFAULT_STREAM_EVENTS,
        retention: float = DEFAULT_STREAM_RETENTION,
    ) -> None:
        self.url, self.max_events, self.retention = url, max_events, retention
        self._logs = _memory_logs.setdefault(urlsplit(url).netloc or "default", {})
        self._next_purge = 0.0

    def _get(self, request_id: str) -> _Log | None:
        now = time.monotonic()
        if now >= self._next_purge:  # now and then, not at every event
            self._next_purge = now + min(PURGE_EVERY, self.retention / 2)
            cutoff = now - self.retention
            for rid in [r for r, log in self._logs.items() if log.written_at < cutoff]:
                del self._logs[rid]
        log = self._logs.get(request_id)
        if log is not None and log.written_at < now - self.retention:
            del self._logs[request_id]
            return None
        return log

    async def open(self, request_id: str) -> tuple[int, int]:
        log = self._get(request_id)
        if log is None:
            log = self._logs[request_id] = _Log(written_at=time.monotonic())
        last = log.kept[-1] if log.kept else None
        return (last.seq, last.attempt) if last else (0, 0)

    async def append(self, request_id: str, kept: Kept) -> None:
        log = self._get(request_id)
        if log is None:
            log = self._logs[request_id] = _Log()
        if log.kept and kept.seq <= log.kept[-1].seq:
            return
        log.kept.append(kept)
        del log.kept[: max(0, len(log.kept) - self.max_events)]
        log.written_at = time.monotonic()
        if log.changed is not None:
            log.changed.set()
            log.changed = None

    async def read(self, request_id: str, after: int) -> list[Kept] | None:
        log = self._get(request_id)
        return None if log is None else [k for k in log.kept if k.seq > after]

    async def last(self, request_id: str) -> Kept | None:
        log = self._get(request_id)
        return log.kept[-1] if log is not None and log.kept else None

    async def wait(self, request_id: str, after: int, timeout: float) -> list[Kept] | None:
        kept = await self.read(request_id, after)
        log = self._logs.get(request_id)
        if kept or log is None:
            return kept
        if log.changed is None:
            log.changed = anyio.Event()
        with anyio.move_on_after(timeout):
            await log.changed.wait()
        return await self.read(request_id, after)


# Stream logs by store URL scheme, as "module:class", imported only when used.
LOGS: dict[str, str] = {
    "memory": "agentqueue.workers.stream_log:MemoryStreamLog",
    "sqlite": "agentqueue.workers.stream_log_sqlite:SQLiteStreamLog",
    "redis": "agentqueue.workers.stream_log_redis:RedisStreamLog",
    "rediss": "agentqueue.workers.stream_log_redis:RedisStreamLog",
}


def open_stream_log(
    url: str,
    *,
    max_events: int = DEFAULT_STREAM_EVENTS,
    retention: float = DEFAULT_STREAM_RETENTION,
) -> StreamLog:
    """The stream log kept beside the session store `url` (memory, SQLite or Redis)."""
    if not max_events >= 1:
        raise ValueError(
            f"stream_events must be a whole number of events, at least 1 (or 0 in the settings:"
            f" keep no streams), got {max_events!r}"
        )
    if not retention > 0 or retention == float("inf"):
        raise ValueError(
            f"stream_retention must be a positive number of seconds, got {retention!r}"
            f" (default {DEFAULT_STREAM_RETENTION:.0f})"
        )
    target = LOGS.get(urlsplit(url).scheme)
    if target is None:
        raise ValueError(
            f"no stream log for store URL {redact_url(url)!r};"
            " use memory://, sqlite:///path or redis://host:port/0"
        )
    module, _, name = target.partition(":")
    log_class: Callable[..., StreamLog] = getattr(importlib.import_module(module), name)
    return log_class(url, max_events=max_events, retention=retention)
