"""`agentqueue ingress http`: agent requests from HTTP, webhooks and CloudEvents; results by id.

    POST /v1/requests               request JSON or a CloudEvent -> 202 {"id", "session_id"}
    GET  /v1/requests/{id}          status and result
    GET  /v1/requests/{id}/events   the request's ResultEvents as Server-Sent Events
    DELETE /v1/requests/{id}        cancel it
    GET  /healthz                   200 once the ingress is connected to its broker

A POST is published as an `AgentRequest` through one `Client`; a task per request collects its
events. Results are kept in this process's memory for `retention` seconds after they finish, so
a GET of the status must reach the ingress process that accepted the request (route by id, or
run one). The event stream need not: with the workers' `store`, an ingress serves the events of
a request it does not track from the stream the workers keep there, so `GET …/events` works
on any ingress process. SSE event ids are the events' `seq`; a client that reconnects with
`Last-Event-ID` (any ingress process) gets the events after it, and after a retried attempt's
restart marker only the newest attempt's.

With signing keys (`WebhookKeys`), a POST must be a Standard Webhooks delivery (see
`ingress.auth`): signed id, time and body, fresh, not seen before; its session and request id
come from the signed content only; and every other endpoint but /healthz needs the request's
bearer token, which the 202 answer carries. Every refusal is a 4xx (or 503 when the ingress
itself is full) whose JSON body names the problem; nothing refused is published.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError, MessageTooLarge
from agentqueue.broker.topology import Topology
from agentqueue.client import Client, RequestHandle
from agentqueue.errors import StreamNotKept
from agentqueue.ingress.auth import ReplayWindow, Signed, WebhookKeys
from agentqueue.ingress.requests import (
    Incoming,
    IngressError,
    content_kind,
    parse_incoming,
    request_id_for,
)
from agentqueue.ingress.results import ResultCache, Tracked, last_event_id, sse, sse_kept
from agentqueue.ingress.server import Limits, server_config
from agentqueue.protocol.messages import ResultEvent
from agentqueue.settings import Settings

log = logging.getLogger("agentqueue.ingress")

MAX_PENDING = 1000  # requests published and not yet answered, at most, before 429
ROUTES = (
    "POST /v1/requests, GET|DELETE /v1/requests/{id}, GET /v1/requests/{id}/events, GET /healthz"
)


class Ingress:
    """The HTTP front door: parses, checks, publishes, tracks. `app` is the ASGI application."""

    def __init__(
        self,
        broker: str | Broker,
        *,
        topology: Topology | None = None,
        keys: WebhookKeys | str | None = None,
        max_body: int = 256 * 1024,
        retention: float = 3600.0,
        timeout: float = 300.0,
        agent: str | None = None,
        max_pending: int = MAX_PENDING,
        replay_capacity: int = 100_000,
        store: str | None = None,
    ) -> None:
        self.broker = broker
        self.store = store  # the workers' session store, where streams are kept (None: not read)
        self.topology = topology or Topology()
        self.keys = WebhookKeys.parse(keys) if isinstance(keys, str) else keys
        self.max_body = max_body
        self.timeout = timeout
        self.agent = agent
        self.max_pending = max_pending
        self.results = ResultCache(retention)
        self.replays = ReplayWindow(replay_capacity)
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
            exception_handlers={HTTPException: _http_error},
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        client = Client(
            self.broker,
            topology=self.topology,
            default_timeout=self.timeout,
            max_in_flight=self.max_pending,
            store=self.store,
        )
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
        signed: Signed | None = None
        try:
            content_kind(request.headers)  # 415 before reading a body of the wrong kind
            body = await self._read_body(request)
            if self.keys is not None:
                signed = self.keys.verify(request.headers, body)
            incoming = parse_incoming(request.headers, body, signed=signed is not None)
            return await self._publish(incoming, signed)
        except IngressError as exc:
            return _refusal(exc)
        except ClientDisconnect:  # nobody is left to answer
            return Response(status_code=400)

    async def _publish(self, incoming: Incoming, signed: Signed | None) -> Response:
        client, tasks = self.client, self._tasks
        if client is None or tasks is None:
            raise IngressError(503, "the ingress is not started yet; retry shortly")
        request_id = self._request_id(incoming, signed)
        if signed is not None:
            self.replays.reserve(signed)  # 409 for a webhook-id accepted before
        try:
            if request_id is not None:
                known = self.results.get(request_id)
                if known is not None:  # the same event delivered again: one request
                    if signed is not None:
                        self.replays.accepted(signed, known.id)
                    return self._accepted(known)
            if self.results.pending >= self.max_pending:
                raise IngressError(
                    429,
                    f"{self.max_pending} requests are waiting for their answers, this"
                    " ingress's limit; retry shortly",
                )
            agent_request = msgspec.structs.replace(incoming.request, id=request_id or None)
            try:
                handle = await client.submit(
                    agent_request,
                    session_id=incoming.session_id or request_id,
                    agent=agent_request.agent or self.agent,
                )
            except MessageTooLarge as exc:
                raise IngressError(413, str(exc), "$") from None
            except BrokerError as exc:
                log.warning("could not publish a request: %s", exc)
                raise IngressError(503, f"broker unavailable: {exc}") from None
        except BaseException:
            if signed is not None:
                self.replays.release(signed)  # not accepted: the sender may send it again
            raise
        if signed is not None:
            self.replays.accepted(signed, handle.id)
        entry = self.results.add(handle.id, handle.session_id)
        tasks.start_soon(self._collect, handle, entry)
        return self._accepted(entry)

    def _request_id(self, incoming: Incoming, signed: Signed | None) -> str | None:
        if self.keys is None or signed is None:
            return request_id_for(incoming)
        # Only signed content chooses it, and only holders of the key can predict it.
        if incoming.request.id:
            return incoming.request.id
        if incoming.event_id is not None:
            return self.keys.request_id("ce\0" + incoming.event_id)
        return self.keys.request_id("webhook\0" + signed.webhook_id)

    def _accepted(self, entry: Tracked) -> Response:
        answer = {"id": entry.id, "session_id": entry.session_id}
        if self.keys is not None:
            answer["token"] = self.keys.token(entry.id)
        return JSONResponse(
            answer, status_code=202, headers={"Location": f"/v1/requests/{entry.id}"}
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

    def _lookup(self, request: Request) -> Tracked:
        """The tracked request of the path; with keys, only for its bearer token (401 first)."""
        request_id = request.path_params["request_id"]
        if self.keys is not None:
            self.keys.check_token(request.headers.get("authorization"), request_id)
        entry = self.results.get(request_id)
        if entry is None:
            raise IngressError(
                404,
                f"no request {request_id[:200]!r} here (unknown, or its result is past retention)",
            )
        return entry

    async def get_request(self, request: Request) -> Response:
        """The request's status (`pending` or its terminal kind), text and error."""
        try:
            entry = self._lookup(request)
        except IngressError as exc:
            return _refusal(exc)
        return JSONResponse(entry.to_dict())

    async def cancel_request(self, request: Request) -> Response:
        """Ask the worker to stop a pending request (202); its result becomes `cancelled`."""
        try:
            entry = self._lookup(request)
        except IngressError as exc:
            return _refusal(exc)
        if entry.final is None and self.client is not None:
            await self.client.cancel(entry.id, session_id=entry.session_id)
        return JSONResponse(entry.to_dict(), status_code=202)

    async def get_events(self, request: Request) -> Response:
        """The request's events as Server-Sent Events: those so far (after `Last-Event-ID`),
        then each as it comes; from the workers' kept stream for a request tracked elsewhere."""
        try:
            after = last_event_id(request.headers.get("last-event-id"))
            try:
                events = sse(self._lookup(request), after)
            except IngressError as exc:
                if exc.status != 404 or self.store is None or self.client is None:
                    raise
                events = await self._kept(request.path_params["request_id"], after, exc)
        except IngressError as exc:
            return _refusal(exc)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _kept(
        self, request_id: str, after: int, unknown: IngressError
    ) -> AsyncIterator[bytes]:
        """The SSE of a request this process does not track, from the stream the workers keep;
        `unknown` (before the response starts) when no events of it are kept."""
        client = self.client
        assert client is not None
        try:
            await client.replay(request_id, after=after)  # refused before the response starts
        except StreamNotKept as exc:
            if exc.first_kept is None:
                raise unknown from None  # the store's name is not the caller's business
            raise IngressError(
                410,
                f"events {after + 1} to {exc.first_kept - 1} of request {request_id[:200]!r}"
                f" are no longer kept; reconnect with Last-Event-ID {exc.first_kept - 1}",
            ) from None
        return sse_kept(client.attach(request_id, after=after))


def _refusal(exc: IngressError) -> Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="agentqueue-ingress"'}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) as JSON that names the problem."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path[:200]}"
    if exc.status_code == 404:
        message = f"no endpoint {where}; the ingress serves {ROUTES}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not served at {request.url.path[:200]}"
    else:
        message = f"{where}: {exc.detail}"
    return JSONResponse(
        {"error": message, "field": None}, status_code=exc.status_code, headers=exc.headers
    )


async def serve_ingress(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    keys: WebhookKeys | None = None,
    max_body: int = 256 * 1024,
    retention: float = 3600.0,
    agent: str | None = None,
    limits: Limits | None = None,
) -> None:
    """Serve the ingress (uvicorn behind the guard of `ingress.server`) until SIGINT or SIGTERM."""
    if keys is None:
        log.warning(
            "the ingress accepts unsigned requests and shows any request's result to whoever"
            " knows its id: set --signing-key (AGENTQUEUE_INGRESS_KEY) to a whsec_ secret"
        )
    ingress = Ingress(
        settings.broker,
        store=None if settings.store.startswith("memory:") else settings.store,
        topology=settings.topology,
        keys=keys,
        max_body=max_body,
        retention=retention,
        timeout=settings.timeout,
        agent=agent,
    )
    config = server_config(ingress.app, host, port, limits or Limits(), log_level="info")
    await uvicorn.Server(config).serve()
