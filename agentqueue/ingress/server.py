"""The ingress's HTTP server: uvicorn with a guard for time and connections at the protocol level.

uvicorn limits concurrency and keep-alive idleness, but has no deadline for reading a request's
headers or body (uvicorn#157): a client that sends one byte every few seconds holds a
connection, a task and its buffers for as long as it likes, and a few hundred such clients
starve everyone else. hypercorn was the other candidate; its `read_timeout` is an idle timeout
that every byte resets (the same trickle defeats it) and it has no connection limit. So the
ingress stays on uvicorn (which the project already uses) and `GuardedH11Protocol`, a small
subclass of uvicorn's h11 protocol, adds what is missing:

- `header_timeout`: the request line and headers must be complete this many seconds after the
  connection opened (or, on a kept-alive connection, after the next request's first byte);
- `body_timeout`: the body must be complete this many seconds after the headers;
- `max_connections`: a connection beyond this many open ones is answered 503 and closed at
  once, before anything is read from it.

A connection past a deadline is answered `408 Request Timeout` with a JSON body naming the limit
and closed. Header size is h11's limit (`max_header_bytes`, a 400 beyond it); body size is the
ingress's own `max_body` (413).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("agentqueue.ingress")


@dataclass(frozen=True)
class Limits:
    """Deadlines (seconds) and sizes the server holds every connection to."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 512
    max_header_bytes: int = 16 * 1024


@dataclass
class GuardCounts:
    """Connections the guard closed or refused, by reason (for logs and tests)."""

    slow_headers: int = 0
    slow_body: int = 0
    refused: int = 0
    closed: list[str] = field(default_factory=list)  # the first few reasons, for diagnosis


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and a connection limit."""

    limits: ClassVar[Limits] = Limits()
    counts: ClassVar[GuardCounts]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" or "body" while a deadline runs
        self._refused = False

    # uvicorn's H11Protocol narrows asyncio.Protocol's BaseTransport to Transport (with the same
    # ignore); an override keeps its signature.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            self.counts.refused += 1
            _answer(
                transport,
                503,
                f"the ingress has {self.limits.max_connections} connections open, its limit;"
                " retry shortly",
            )
            return
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._arm("headers")  # the first bytes of the next request on a kept-alive one
        super().data_received(data)
        self._advance()

    def send_400_response(self, msg: str) -> None:
        # h11 found the request broken (a body cut short, bad chunking) while the app was
        # already handling it: this 400 is the answer, and the app's own goes nowhere instead
        # of failing inside uvicorn.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._advance()

    def _advance(self) -> None:
        state = self.conn.their_state
        if self._phase == "headers" and state is not h11.IDLE:
            if state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()
        elif self._phase == "body" and state is not h11.SEND_BODY:
            self._disarm()

    def _arm(self, phase: str) -> None:
        self._disarm()
        limit = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
        self._phase = phase
        self._deadline = self.loop.call_later(limit, self._expired, phase, limit)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, phase: str, limit: float) -> None:
        self._deadline, self._phase = None, None
        if self.transport is None or self.transport.is_closing():
            return
        what = "the request headers" if phase == "headers" else "the request body"
        message = f"{what} did not arrive within {limit:g} s; the connection is closed"
        if phase == "headers":
            self.counts.slow_headers += 1
        else:
            self.counts.slow_body += 1
        if len(self.counts.closed) < 20:
            self.counts.closed.append(message)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection of %s: %s", client, message)
        # While headers are awaited, no response is under way (self.cycle, if any, is the
        # previous request's, answered already); while the body is, the app may have started one.
        if phase == "headers" or self.cycle is None or not self.cycle.response_started:
            _answer(self.transport, 408, message)
        else:
            self.transport.close()


def _answer(transport: asyncio.Transport, status: int, message: str) -> None:
    """Write a whole JSON response on a connection h11 has not answered, and close it."""
    body = json.dumps({"error": message, "field": None}).encode()
    reason = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    transport.write(head + b"connection: close\r\n\r\n" + body)
    transport.close()


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    """A protocol class that holds connections to `limits`, with counts of its own."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"limits": limits, "counts": GuardCounts()},
    )


def server_config(app: Any, host: str, port: int, limits: Limits, **options: Any) -> uvicorn.Config:
    """A uvicorn configuration serving `app` through the guard."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        lifespan="on",
        **options,
    )
