"""A local MNS-compatible queue server that the unmodified `aliyun-mns-sdk` talks to.

It speaks the MNS queue REST protocol (version 2015-06-06) over HTTP/1.1 with keep-alive, checks
the SDK's request signatures, and keeps all state in SQLite (see `mns_store`), so a restart loses
nothing. Long polls wait on the event loop and are woken when a message is sent or becomes
visible; they never poll the database in a loop.

    with LocalMNS("mns.db") as mns:
        queue = mns.account().get_queue("jobs")
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from mns.account import Account
from starlette.requests import Request
from starlette.responses import Response

from agentqueue.deploy.local.mns_protocol import (
    CONTENT_TYPE,
    MAX_BATCH,
    MAX_BATCH_BODY_BYTES,
    MAX_VISIBILITY_TIMEOUT,
    MAX_WAIT_SECONDS,
    MNS_VERSION,
    MNSError,
    check_queue_name,
    check_receipt_handle,
    check_signature,
    content_md5,
    delete_errors_document,
    error_document,
    invalid_argument,
    message_not_exist,
    messages_document,
    new_request_id,
    parse_authorization,
    parse_int,
    parse_queue_meta,
    parse_receipt_handles,
    parse_send,
    queue_document,
    queue_list_document,
    queue_not_exist,
    sent_document,
    visibility_document,
)
from agentqueue.deploy.local.mns_store import (
    HandleNotFound,
    MNSStore,
    QueueConflict,
    QueueNotFound,
    StoredMessage,
)
from agentqueue.deploy.local.supervisor import StartStop
from agentqueue.deploy.local.threaded_server import listen_socket, serve_in_thread, stop_in_thread

__all__ = [
    "DEFAULT_ACCESS_ID",
    "DEFAULT_ACCESS_KEY",
    "LocalMNS",
    "MNSApp",
    "ServerCredentials",
    "serve",
    "server_credentials",
]

logger = logging.getLogger(__name__)

# The documented credentials for tests and a first local run: anyone who reads this file knows
# them, so `server_credentials` refuses them on an address other than loopback.
DEFAULT_ACCESS_ID = "local-mns"
DEFAULT_ACCESS_KEY = "local-mns-secret"
# The variables the MNS broker reads its credentials from: a server and the workers started in
# one shell agree without further setup.
ENV_ACCESS_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_ACCESS_KEY = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# MNS refuses requests whose Date is further than this from its clock.
MAX_CLOCK_SKEW_SECONDS = 900
# The SDK reuses one keep-alive connection and only recovers from some ways a server may close
# it, so idle connections are kept open long.
KEEP_ALIVE_SECONDS = 300


class _Waiters:
    """Wake-ups for long-polling receivers, per queue; used only on the server's event loop."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False

    def event(self, queue: str) -> asyncio.Event:
        """The event the next change to `queue` sets; take it before looking at the queue."""
        if queue not in self._events:
            self._events[queue] = asyncio.Event()
        return self._events[queue]

    def notify(self, queue: str) -> None:
        """Wake everyone waiting on `queue`."""
        event = self._events.pop(queue, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        """Wake every waiter for good."""
        self.closed = True
        for event in self._events.values():
            event.set()
        self._events.clear()


def _empty(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, headers=headers)


def _xml(content: bytes, status: int = 200) -> Response:
    return Response(content, status_code=status, headers={"content-type": CONTENT_TYPE})


@contextmanager
def _queue_errors(name: str) -> Iterator[None]:
    try:
        yield
    except QueueNotFound:
        raise queue_not_exist(name) from None


def _stale_handle(handle: str) -> MNSError:
    return message_not_exist(
        f"Message not exist: receipt handle {handle!r} has expired, or a later receive or "
        "visibility change replaced it, or the message was deleted."
    )


class MNSApp:
    """ASGI app speaking the MNS queue REST protocol over an `MNSStore`."""

    def __init__(
        self,
        store: MNSStore,
        access_id: str = DEFAULT_ACCESS_ID,
        access_key: str = DEFAULT_ACCESS_KEY,
        security_token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._access_id = access_id
        self._access_key = access_key
        self._security_token = security_token
        self._clock = clock
        self._waiters = _Waiters()

    def release_waiters(self) -> None:
        """Answer every pending and future long poll at once; call on the server's loop."""
        self._waiters.close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        request_id = new_request_id()
        base_url = f"{scope.get('scheme', 'http')}://{request.headers.get('host', 'localhost')}"
        try:
            body = await self._read_body(request)
            self._authenticate(request, body)
            response = await self._dispatch(request, body, base_url)
        except MNSError as error:
            response = _xml(error_document(error, request_id, base_url), error.status)
        except Exception:
            logger.exception("local MNS request %s %s failed", request.method, scope["path"])
            internal = MNSError(500, "InternalError", "Internal error; see the server log.")
            response = _xml(error_document(internal, request_id, base_url), 500)
        response.headers["x-mns-request-id"] = request_id
        response.headers["x-mns-version"] = MNS_VERSION
        await response(scope, receive, send)

    @staticmethod
    async def _read_body(request: Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                raise invalid_argument(f"The request body is over {MAX_REQUEST_BYTES} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ authentication

    def _authenticate(self, request: Request, body: bytes) -> None:
        headers = {name: value for name, value in request.headers.items()}
        access_id, presented = parse_authorization(headers.get("authorization"))
        self._check_date(headers.get("date"))
        version = headers.get("x-mns-version")
        if version is None:
            raise MNSError(400, "MissingVersionHeader", "x-mns-version header is required.")
        if version != MNS_VERSION:
            raise MNSError(
                400,
                "InvalidVersionHeader",
                f"x-mns-version is {version!r}; this server speaks {MNS_VERSION}.",
            )
        if access_id != self._access_id:
            raise MNSError(
                403,
                "InvalidAccessKeyId",
                f"The AccessKey Id you provided is not exist: {access_id!r}.",
            )
        # The SDK signs the URI as it sends it, query included and nothing URL-decoded.
        scope = request.scope
        resource = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope["query_string"]:
            resource += "?" + scope["query_string"].decode("latin-1")
        check_signature(self._access_key, request.method, headers, resource, presented)
        # The SDK adds security-token after signing, so it is checked on its own.
        if (
            self._security_token is not None
            and headers.get("security-token") != self._security_token
        ):
            raise MNSError(
                403,
                "AccessDenied",
                "The security-token header is missing or is not the STS token "
                "this server was configured with.",
            )
        md5 = headers.get("content-md5")
        if md5 is not None and md5 != content_md5(body):
            raise MNSError(
                400,
                "InvalidDegist",
                f"The Content-MD5 you specified is invalid: {md5!r} does not match "
                f"the body, whose Content-MD5 is {content_md5(body)!r}.",
            )

    def _check_date(self, date: str | None) -> None:
        if date is None:
            raise MNSError(400, "MissingDateHeader", "Date header is required.")
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise MNSError(
                400, "InvalidDateHeader", f"The Date header {date!r} is not an RFC 1123 date."
            ) from None
        if abs(self._clock() - sent) > MAX_CLOCK_SKEW_SECONDS:
            raise MNSError(
                408,
                "TimeExpired",
                f"The http request you sent is expired: Date {date!r} is more than "
                f"{MAX_CLOCK_SKEW_SECONDS} s from the server's clock.",
            )

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, request: Request, body: bytes, base_url: str) -> Response:
        method = request.method
        parts = request.scope["path"].split("/")[1:]
        params = {
            k.lower(): v
            for k, v in parse_qsl(request.scope["query_string"].decode(), keep_blank_values=True)
        }
        if parts == ["queues"] and method == "GET":
            return self._list_queues(request, base_url)
        if len(parts) == 2 and parts[0] == "queues" and parts[1]:
            name = parts[1]
            with _queue_errors(name):
                if method == "PUT":
                    return self._put_queue(name, body, params, base_url)
                if method == "GET":
                    return _xml(queue_document(self._store.get_queue(name)))
                if method == "DELETE":
                    self._store.delete_queue(name)
                    self._waiters.notify(name)
                    return _empty(204)
        if len(parts) == 3 and parts[0] == "queues" and parts[1] and parts[2] == "messages":
            name = parts[1]
            with _queue_errors(name):
                if method == "POST":
                    return self._send(name, body)
                if method == "GET":
                    return await self._receive(name, params)
                if method == "DELETE":
                    return self._delete(name, body, params)
                if method == "PUT":
                    return self._change_visibility(name, params)
        raise MNSError(
            400,
            "InvalidRequestURL",
            f"Http request URL format invalid: {method} {request.scope['path']}.",
        )

    # ------------------------------------------------------------------ queues

    def _put_queue(self, name: str, body: bytes, params: dict[str, str], base_url: str) -> Response:
        values = parse_queue_meta(body)
        if params.get("metaoverride", "").lower() == "true":
            self._store.set_queue_attributes(name, values)
            return _empty(204)
        check_queue_name(name)
        try:
            created = self._store.create_queue(name, values)
        except QueueConflict as conflict:
            raise MNSError(
                409,
                "QueueAlreadyExist",
                f"The queue you want to create is already exist: {name!r} has "
                f"{conflict.existing}, not the attributes requested.",
            ) from None
        # The SDK reads Location on 204 as well as on 201.
        return _empty(201 if created else 204, {"location": f"{base_url}/queues/{name}"})

    def _list_queues(self, request: Request, base_url: str) -> Response:
        headers = request.headers
        ret_number = headers.get("x-mns-ret-number")
        limit = 1000 if ret_number is None else parse_int("x-mns-ret-number", ret_number, 1, 1000)
        queues, next_marker = self._store.list_queues(
            prefix=headers.get("x-mns-prefix", ""),
            marker=headers.get("x-mns-marker", ""),
            limit=limit,
        )
        with_meta = headers.get("x-mns-with-meta", "").lower() == "true"
        return _xml(queue_list_document(queues, base_url, next_marker, with_meta))

    # ------------------------------------------------------------------ messages

    def _send(self, name: str, body: bytes) -> Response:
        messages, batch = parse_send(body)
        limit = self._store.queue_attributes(name).maximum_message_size
        sizes = [len(message.body.encode("utf-8")) for message in messages]
        for size in sizes:
            if size > limit:
                raise invalid_argument(
                    f"The value of MessageBody should between 1 and {limit} bytes "
                    f"(MaximumMessageSize of queue {name!r}); got {size} bytes."
                )
        if batch and sum(sizes) > MAX_BATCH_BODY_BYTES:
            raise invalid_argument(
                f"The message bodies of a batch should total at most {MAX_BATCH_BODY_BYTES} "
                f"bytes; got {sum(sizes)} bytes."
            )
        stored = self._store.send(name, messages)
        self._waiters.notify(name)
        return _xml(sent_document(stored, batch=batch), 201)

    async def _receive(self, name: str, params: dict[str, str]) -> Response:
        batch = "numofmessages" in params
        count = parse_int("numOfMessages", params["numofmessages"], 1, MAX_BATCH) if batch else 1
        if params.get("peekonly", "").lower() == "true":
            peeked = self._store.peek(name, count)
            if not peeked:
                raise message_not_exist()
            return _xml(messages_document(peeked, batch=batch, received=False))
        if "waitseconds" in params:
            wait = parse_int("waitseconds", params["waitseconds"], 0, MAX_WAIT_SECONDS)
        else:
            wait = self._store.queue_attributes(name).polling_wait_seconds
        received = await self._wait_for_messages(name, count, wait)
        return _xml(messages_document(received, batch=batch, received=True))

    async def _wait_for_messages(self, name: str, count: int, wait: int) -> list[StoredMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # Taken before looking, so a send between the look and the wait still wakes us.
            woken = self._waiters.event(name)
            received = self._store.receive(name, count)
            if received:
                return received
            remaining = deadline - loop.time()
            if remaining <= 0 or self._waiters.closed:
                raise message_not_exist()
            next_visible = self._store.next_visible_at(name)
            if next_visible is not None:
                # A delayed or unacknowledged message becoming visible sends no notification.
                until_visible = (next_visible - self._store.now_ms()) / 1000 + 0.001
                remaining = min(remaining, max(until_visible, 0.001))
            try:
                await asyncio.wait_for(woken.wait(), timeout=remaining)
            except TimeoutError:
                pass

    def _delete(self, name: str, body: bytes, params: dict[str, str]) -> Response:
        handle = params.get("receipthandle")
        if handle is not None:
            check_receipt_handle(handle)
            try:
                self._store.delete(name, handle)
            except HandleNotFound:
                raise _stale_handle(handle) from None
            return _empty(204)
        if not body.strip():
            raise MNSError(400, "MissingReceiptHandle", "ReceiptHandle is required.")
        errors: list[tuple[str, MNSError]] = []
        for handle in parse_receipt_handles(body):
            try:
                check_receipt_handle(handle)
                self._store.delete(name, handle)
            except MNSError as error:
                errors.append((handle, error))
            except HandleNotFound:
                errors.append((handle, _stale_handle(handle)))
        if not errors:
            return _empty(204)
        stale_only = all(error.code == "MessageNotExist" for _, error in errors)
        return _xml(delete_errors_document(errors), 404 if stale_only else 400)

    def _change_visibility(self, name: str, params: dict[str, str]) -> Response:
        handle = params.get("receipthandle")
        if handle is None:
            raise MNSError(400, "MissingReceiptHandle", "ReceiptHandle is required.")
        timeout = params.get("visibilitytimeout")
        if timeout is None:
            raise MNSError(400, "MissingVisibilityTimeout", "VisibilityTimeout is required.")
        check_receipt_handle(handle)
        seconds = parse_int("VisibilityTimeout", timeout, 1, MAX_VISIBILITY_TIMEOUT)
        try:
            message = self._store.change_visibility(name, handle, seconds)
        except HandleNotFound:
            raise _stale_handle(handle) from None
        self._waiters.notify(name)
        return _xml(visibility_document(message))


# ---------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn, answering pending long polls first on shutdown so it need not wait them out."""

    def __init__(self, config: uvicorn.Config, app: MNSApp) -> None:
        super().__init__(config)
        self._mns_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Release long polls, then shut down as uvicorn does."""
        self._mns_app.release_waiters()
        await super().shutdown(sockets=sockets)


@dataclass(frozen=True)
class ServerCredentials:
    """The AccessKey pair a local MNS server accepts, and where it came from."""

    access_id: str
    access_key: str = field(repr=False)
    source: str  # "flags", the variable names, or "the documented test defaults"

    @property
    def is_default(self) -> bool:
        """True for the documented test pair (which may then be printed)."""
        return (self.access_id, self.access_key) == (DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY)

    def describe(self) -> str:
        """One line for the operator; shows the secret only when it is the documented one."""
        if self.is_default:
            return (
                f"credentials: {ENV_ACCESS_ID}={self.access_id}"
                f" {ENV_ACCESS_KEY}={self.access_key} (the documented test defaults)"
            )
        return f"credentials: AccessKeyId {self.access_id}, secret from {self.source} (not shown)"


def server_credentials(
    host: str,
    access_id: str | None = None,
    access_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerCredentials:
    """The pair to accept: flags, else the ALIBABA_CLOUD_* variables, else the test defaults.

    The test defaults are public, so they are refused unless the server listens on loopback.
    """
    env = os.environ if environ is None else environ
    if access_id or access_key:
        if not (access_id and access_key):
            raise ValueError(
                "give both --access-key-id and --access-key-secret, or neither"
                f" (then {ENV_ACCESS_ID} and {ENV_ACCESS_KEY} are used)"
            )
        credentials = ServerCredentials(access_id, access_key, "--access-key-secret")
    elif env.get(ENV_ACCESS_ID) or env.get(ENV_ACCESS_KEY):
        if not (env.get(ENV_ACCESS_ID) and env.get(ENV_ACCESS_KEY)):
            raise ValueError(f"set both {ENV_ACCESS_ID} and {ENV_ACCESS_KEY}, or neither")
        credentials = ServerCredentials(env[ENV_ACCESS_ID], env[ENV_ACCESS_KEY], ENV_ACCESS_KEY)
    else:
        credentials = ServerCredentials(
            DEFAULT_ACCESS_ID, DEFAULT_ACCESS_KEY, "the documented test defaults"
        )
    if credentials.is_default and not _is_loopback(host):
        raise ValueError(
            f"local MNS on {host} with the documented test credentials: anyone who can reach"
            " it could use them; pass --access-key-id and --access-key-secret (or set"
            f" {ENV_ACCESS_ID} and {ENV_ACCESS_KEY}), or listen on 127.0.0.1"
        )
    return credentials


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app: MNSApp, **overrides: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=5,
        **overrides,
    )


class LocalMNS(StartStop):
    """A local MNS server on a background thread; a context manager that starts and stops it."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        access_id: str = DEFAULT_ACCESS_ID,
        access_key: str = DEFAULT_ACCESS_KEY,
        security_token: str | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.port = port
        self.access_id = access_id
        self.access_key = access_key
        self.security_token = security_token
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._store: MNSStore | None = None

    @property
    def endpoint(self) -> str:
        """The URL to give `mns.account.Account`, e.g. http://127.0.0.1:PORT."""
        if self._server is None:
            raise RuntimeError("LocalMNS is not running; call start() first")
        return _url(self.host, self.port)

    def account(self) -> Account:
        """A new SDK Account for this server; use one per thread, as each holds one connection."""
        return Account(self.endpoint, self.access_id, self.access_key, self.security_token or "")

    def start(self, timeout: float = 10.0) -> LocalMNS:
        """Start serving and return once the server accepts connections.

        A port chosen by the system (port=0) is kept, so a restart serves the same endpoint.
        """
        if self._thread is not None:
            raise RuntimeError(f"LocalMNS is already running at {self.endpoint}")
        sock = listen_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        store = MNSStore(self.db_path)
        app = MNSApp(store, self.access_id, self.access_key, self.security_token)
        server = _Server(_config(app, log_config=None, log_level="warning", access_log=False), app)
        what = f"local MNS server on {_url(self.host, self.port)}"
        try:
            thread = serve_in_thread(
                server, sock, name=f"local-mns-{self.port}", what=what, timeout=timeout
            )
        except RuntimeError:
            store.close()
            raise
        self._server, self._thread, self._store = server, thread, store
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; pending long polls answer MessageNotExist. Does nothing if stopped."""
        if self._server is None or self._thread is None or self._store is None:
            return
        stop_in_thread(
            self._server, self._thread, what=f"local MNS server at {self.endpoint}", timeout=timeout
        )
        self._store.close()
        self._server = self._thread = self._store = None


def serve(
    host: str,
    port: int,
    db_path: str | os.PathLike[str],
    access_id: str = DEFAULT_ACCESS_ID,
    access_key: str = DEFAULT_ACCESS_KEY,
    security_token: str | None = None,
) -> None:
    """Serve a local MNS in the foreground until interrupted (Ctrl-C)."""
    sock = listen_socket(host, port)
    store = MNSStore(db_path)
    app = MNSApp(store, access_id, access_key, security_token)
    server = _Server(_config(app, log_level="info"), app)
    # uvicorn configures and owns this logger's output, so the banner matches its own lines.
    banner = logging.getLogger("uvicorn.error")
    try:
        banner.info(
            "MNS endpoint %s, AccessKeyId %s, database %s",
            _url(host, sock.getsockname()[1]),
            access_id,
            Path(db_path).resolve(),
        )
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once it has shut down cleanly.
        pass
    finally:
        sock.close()
        store.close()
