"""`agentqueue console`: one web page for partitions, workers, dead letters and requests.

    GET  /                          the live page (polls /fragments/overview every second)
    GET  /fragments/overview        the live part, as HTML
    GET  /requests/{id}             a request: its hops, its answer, its trace as a waterfall
    POST /dead-letters/replay       replay one dead letter (form field `key`: id or index)
    POST /dead-letters/purge        delete one dead letter for good
    GET  /metrics                   the console's own metrics, for Prometheus
    GET  /healthz                   200 while the broker answers, 503 while it does not

Served by uvicorn behind the ingress's connection guard (`ingress.server`). It listens on
127.0.0.1 unless told otherwise; anywhere else it needs a token of its own
(AGENTQUEUE_CONSOLE_TOKEN, never a signing key), sent as `Authorization: Bearer …`, or once
as `?token=…`, which sets a cookie for the browser.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentqueue.broker.base import Broker
from agentqueue.console.pages import not_found_page, overview, overview_page, request_page
from agentqueue.console.state import ConsoleState
from agentqueue.errors import ConsoleRefused
from agentqueue.ingress.server import Limits, server_config
from agentqueue.settings import Settings
from agentqueue.telemetry.prometheus import metrics_text

log = logging.getLogger("agentqueue.console")

COOKIE = "agentqueue_console"


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def read_token(value: str | None) -> str | None:
    """The token `value` names (`@path` reads a file); None when blank."""
    text = (value or "").strip()
    if text.startswith("@"):
        text = Path(text[1:]).read_text().strip()
    return text or None


def check_binding(host: str, token: str | None, settings: Settings) -> None:
    """Refuse a console others can reach without a token, or one whose token is a signing key."""
    if token is None and not is_loopback(host):
        raise ConsoleRefused(
            f"--host {host} is not a loopback address, and the console shows envelopes and"
            " replays dead letters: set AGENTQUEUE_CONSOLE_TOKEN (or --token, @path reads a"
            " file) to a secret of its own, or listen on 127.0.0.1"
        )
    ring = settings.key_ring()
    if token is not None and ring is not None:
        if ring.holds(token.encode()):
            raise ConsoleRefused(
                "the console token is one of the signing keys (AGENTQUEUE_SIGNING_KEYS); whoever"
                " holds it could sign envelopes: give the console a secret of its own"
            )


class _TokenGate:
    """Lets a request through with the token (header, cookie, or ?token= once); 401 otherwise."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        offered = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        offered = offered or request.cookies.get(COOKIE, "")
        in_query = request.query_params.get("token")
        if in_query is not None and self._matches(in_query):
            # Into a cookie, and off the address bar (and out of the history).
            rest = {k: v for k, v in request.query_params.items() if k != "token"}
            target = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        if not self._matches(offered):
            response = JSONResponse(
                {
                    "error": "this console needs its token: send Authorization: Bearer <token>,"
                    " or open the page once with ?token=<token> (AGENTQUEUE_CONSOLE_TOKEN)"
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="agentqueue-console"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _matches(self, offered: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(offered.encode(), self.token.encode())


class Console:
    """The console's routes over one `ConsoleState`."""

    def __init__(self, state: ConsoleState, *, token: str | None = None) -> None:
        self.state = state
        routes = [
            Route("/", self.home),
            Route("/fragments/overview", self.fragment),
            Route("/requests", self.find_request),
            Route("/requests/{request_id}", self.show_request),
            Route("/dead-letters/{action}", self.dead_letter_action, methods=["POST"]),
            Route("/healthz", self.health),
            Route("/metrics", self.metrics),
        ]
        self.app: ASGIApp = _TokenGate(Starlette(routes=routes, lifespan=self._lifespan), token)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(self.state.run)
            yield
            tg.cancel_scope.cancel()

    async def home(self, request: Request) -> Response:
        """The live page."""
        return HTMLResponse(overview_page(self.state, request.query_params.get("said")))

    async def fragment(self, request: Request) -> Response:
        """The live part of the page, for the poll."""
        return HTMLResponse(overview(self.state), headers={"Cache-Control": "no-store"})

    async def find_request(self, request: Request) -> Response:
        """The search box: on to the request's page."""
        wanted = request.query_params.get("id", "").strip()
        return RedirectResponse(f"/requests/{quote(wanted, safe='')}", status_code=303)

    async def show_request(self, request: Request) -> Response:
        """One request, or 404 naming where the console looked."""
        request_id = request.path_params["request_id"][:200]
        view = await self.state.request(request_id)
        if view is None:
            return HTMLResponse(not_found_page(request_id, self.state.span_files), 404)
        return HTMLResponse(request_page(view))

    async def dead_letter_action(self, request: Request) -> Response:
        """Replay or purge one dead letter with the CLI's own code; back to the page, saying so."""
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return JSONResponse(
                {"error": f"no dead-letter action {action!r}; use replay or purge"}, status_code=404
            )
        form = await request.form()
        key = str(form.get("key", "")).strip()
        if not key:
            return JSONResponse({"error": "the form needs a key (envelope id)"}, status_code=400)
        said = await self.state.act_on_dead_letter(action, key)
        return RedirectResponse(f"/?{urlencode({'said': said})}", status_code=303)

    async def metrics(self, request: Request) -> Response:
        """The console's metrics (what it sees of queues and workers), for Prometheus."""
        body, content_type = metrics_text()
        return Response(body, media_type=content_type)

    async def health(self, request: Request) -> Response:
        """Whether the broker answers."""
        error = self.state.broker_error
        return JSONResponse(
            {"broker": "ok" if error is None else error}, status_code=200 if error is None else 503
        )


async def serve_console(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    token: str | None = None,
    span_files: Sequence[str] = (),
    interval: float = 1.0,
) -> None:
    """Serve the console until SIGINT or SIGTERM."""
    check_binding(host, token, settings)
    store = settings.open_store()
    broker: Broker = settings.open_broker()
    try:
        async with broker:
            state = ConsoleState(broker, settings.topology, store, span_files, interval=interval)
            state.export_metrics()
            console = Console(state, token=token)
            config = server_config(console.app, host, port, Limits(), log_level="warning")
            log.warning("console on http://%s:%d/", host, port)
            await uvicorn.Server(config).serve()
    finally:
        await store.close()
