"""`agentqueue ingress http`: agent requests from HTTP, webhooks and CloudEvents; results by id.

    POST /v1/requests               request JSON or a CloudEvent -> 202 {"id", "session_id"}
    GET  /v1/requests/{id}          status and result
    GET  /v1/requests/{id}/events   the request's ResultEvents as Server-Sent Events
    DELETE /v1/requests/{id}        cancel it
    GET  /healthz                   200 once the ingress is connected to its broker

A POST is published as an `AgentRequest` through one `Client`; a task per request collects its
events. Results are kept in this process's memory for `retention` seconds after they finish, so
a GET must reach the ingress process that accepted the request (route by id, or run one).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError, MessageTooLarge
from agentqueue.broker.topology import Topology
from agentqueue.client import Client, RequestHandle
from agentqueue.ingress_requests import (
    IngressError,
    check_signature,
    parse_incoming,
    request_id_for,
)
from agentqueue.protocol.messages import ResultEvent
from agentqueue.settings import Settings

log = logging.getLogger("agentqueue.ingress")

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
        self._entries: OrderedDict[str, Tracked] = OrderedDict()
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> finish time, in order

    def add(self, request_id: str, session_id: str) -> Tracked:
        """Start tracking a request."""
        self.purge()
        entry = self._entries[request_id] = Tracked(request_id, session_id)
        return entry

    def finished(self, entry: Tracked) -> None:
        """Start the retention clock of a request that ended."""
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


class Ingress:
    """The HTTP front door: parses, checks, publishes, tracks. `app` is the ASGI application."""

    def __init__(
        self,
        broker: str | Broker,
        *,
        topology: Topology | None = None,
        signing_key: str | None = None,
        max_body: int = 256 * 1024,
        retention: float = 3600.0,
        timeout: float = 300.0,
        agent: str | None = None,
    ) -> None:
        self.broker = broker
        self.topology = topology or Topology()
        self.signing_key = signing_key
        self.max_body = max_body
        self.timeout = timeout
        self.agent = agent
        self.results = ResultCache(retention)
        self.client: Client | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/requests", self.post_request, methods=["POST"]),
                Route("/v1/requests/{request_id}", self.get_request, methods=["GET"]),
                Route("/v1/requests/{request_id}", self.cancel_request, methods=["DELETE"]),
                Route("/v1/requests/{request_id}/events", self.get_events, methods=["GET"]),
                Route("/healthz", self.health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        client = Client(self.broker, topology=self.topology, default_timeout=self.timeout)
        async with client, anyio.create_task_group() as tasks:
            self.client, self._tasks = client, tasks
            try:
                yield
            finally:
                self.client, self._tasks = None, None
                tasks.cancel_scope.cancel()

    async def health(self, request: Request) -> Response:
        """200 while connected, 503 before start-up finished."""
        ok = self.client is not None
        status = 200 if ok else 503
        return JSONResponse({"ok": ok, "tracked": len(self.results)}, status_code=status)

    async def post_request(self, request: Request) -> Response:
        """Accept one agent request; 202 with its id and session once the broker has it."""
        try:
            body = await self._read_body(request)
            if self.signing_key:
                check_signature(self.signing_key, request.headers, body)
            incoming = parse_incoming(request.headers, body)
        except IngressError as exc:
            return JSONResponse(exc.to_dict(), status_code=exc.status)
        client, tasks = self.client, self._tasks
        if client is None or tasks is None:
            return JSONResponse(
                {"error": "the ingress is not started", "field": None}, status_code=503
            )
        request_id = request_id_for(incoming)
        if request_id is not None:
            known = self.results.get(request_id)
            if known is not None:  # the same webhook or event delivered again: one request
                return self._accepted(known)
        agent_request = msgspec.structs.replace(incoming.request, id=request_id or None)
        try:
            handle = await client.submit(
                agent_request,
                session_id=incoming.session_id or request_id,
                agent=agent_request.agent or self.agent,
            )
        except MessageTooLarge as exc:
            return JSONResponse({"error": str(exc), "field": "$"}, status_code=413)
        except BrokerError as exc:
            log.warning("could not publish a request: %s", exc)
            return JSONResponse(
                {"error": f"broker unavailable: {exc}", "field": None}, status_code=503
            )
        entry = self.results.add(handle.id, handle.session_id)
        tasks.start_soon(self._collect, handle, entry)
        return self._accepted(entry)

    @staticmethod
    def _accepted(entry: Tracked) -> Response:
        return JSONResponse(
            {"id": entry.id, "session_id": entry.session_id},
            status_code=202,
            headers={"Location": f"/v1/requests/{entry.id}"},
        )

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_large = IngressError(
            413, f"body is over the {self.max_body} byte limit; send large inputs by URL", "$"
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _collect(self, handle: RequestHandle, entry: Tracked) -> None:
        try:
            async for event in handle.events():
                entry.add(event)
        finally:
            # Shutting down: nobody here will see this request's answer.
            if entry.final is None:
                entry.add(ResultEvent(entry.id, "cancelled", error="ingress stopped"))
            self.results.finished(entry)

    def _lookup(self, request: Request) -> Tracked | None:
        return self.results.get(request.path_params["request_id"])

    async def get_request(self, request: Request) -> Response:
        """The request's status (`pending` or its terminal kind), text and error."""
        entry = self._lookup(request)
        if entry is None:
            return _not_found(request)
        return JSONResponse(entry.to_dict())

    async def cancel_request(self, request: Request) -> Response:
        """Ask the worker to stop a pending request (202); its result becomes `cancelled`."""
        entry = self._lookup(request)
        if entry is None:
            return _not_found(request)
        if entry.final is None and self.client is not None:
            await self.client.cancel(entry.id, session_id=entry.session_id)
        return JSONResponse(entry.to_dict(), status_code=202)

    async def get_events(self, request: Request) -> Response:
        """The request's events as Server-Sent Events: those so far, then each as it comes."""
        entry = self._lookup(request)
        if entry is None:
            return _not_found(request)
        return StreamingResponse(
            _sse(entry),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _sse(entry: Tracked) -> AsyncIterator[bytes]:
    sent = 0
    while True:
        changed = entry.changed
        while sent < len(entry.events):
            event = entry.events[sent]
            sent += 1
            data = _encoder.encode(event)
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (sent, event.kind.encode(), data)
        if entry.final is not None:
            return
        with anyio.move_on_after(KEEPALIVE) as scope:
            await changed.wait()
        if scope.cancelled_caught:
            yield b": keep-alive\n\n"


def _not_found(request: Request) -> Response:
    request_id = request.path_params["request_id"]
    return JSONResponse(
        {
            "error": f"no request {request_id!r} here (unknown, or its result is past retention)",
            "field": None,
        },
        status_code=404,
    )


async def serve_ingress(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    signing_key: str | None = None,
    max_body: int = 256 * 1024,
    retention: float = 3600.0,
    agent: str | None = None,
) -> None:
    """Serve the ingress with uvicorn until SIGINT or SIGTERM."""
    import uvicorn

    ingress = Ingress(
        settings.broker,
        topology=settings.topology,
        signing_key=signing_key,
        max_body=max_body,
        retention=retention,
        timeout=settings.timeout,
        agent=agent,
    )
    config = uvicorn.Config(ingress.app, host=host, port=port, lifespan="on", log_level="info")
    await uvicorn.Server(config).serve()
