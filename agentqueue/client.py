"""`Client`: publish agent requests and tool calls, get results back over a reply queue."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TypedDict, Unpack

import anyio
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import redact_url
from agentqueue.errors import RequestBusy, RequestCancelled, RequestFailed, RequestTimedOut
from agentqueue.protocol.codec import encode
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import (
    RESULT_KINDS,
    AgentRequest,
    Approval,
    Cancel,
    Envelope,
    OnBusy,
    ResultEvent,
    ToolCall,
    ToolResult,
    user_message,
)
from agentqueue.settings import Settings
from agentqueue.workers import spans
from agentqueue.workers.sandbox_snapshot import END_SESSION_TOOL
from agentqueue.workers.session_store import artifact_key, open_store
from agentqueue.workers.stream_log import (
    DEFAULT_STREAM_EVENTS,
    StreamLog,
    follow,
    open_stream_log,
    replay,
)

ANSWER_GRACE = 5.0  # seconds past a deadline the client still waits for the worker's timed_out


class RequestOptions(TypedDict, total=False):
    """The keyword options of `Client.submit`, `call` and `stream`, all optional."""

    session_id: str | None
    """The session it joins (default: the request's own, else a new one)."""
    agent: str | None
    """The agent that answers it (default: the request's own)."""
    timeout: float | None
    """Seconds it may take (default: the client's `default_timeout`)."""
    user_id: str | None
    """Whose request it is (default: the request's)."""
    on_busy: OnBusy | None
    """What it does if its session is busy (default: the agent's, `enqueue`)."""
    delay: float | None
    """Seconds from now before it starts (not with `not_before`)."""
    not_before: datetime | float | None
    """When it starts at the earliest: an aware datetime or unix seconds."""


def due_time(delay: float | None, not_before: datetime | float | None) -> float | None:
    """Unix seconds a delayed request is due, from `delay` or `not_before` (at most one)."""
    if delay is not None and not_before is not None:
        raise ValueError("give a request delay or not_before, not both")
    if delay is not None:
        if not 0 <= delay < math.inf:
            raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
        return time.time() + delay
    if isinstance(not_before, datetime):
        if not_before.tzinfo is None:
            raise ValueError(
                f"not_before {not_before.isoformat()} has no time zone; give an aware datetime"
                " (e.g. datetime.now(UTC) + timedelta(hours=1))"
            )
        return not_before.timestamp()
    if not_before is not None and not abs(not_before) < math.inf:
        raise ValueError(f"not_before must be a finite unix time, got {not_before!r}")
    return not_before


class RequestHandle:
    """A submitted request: iterate its events, await its final result, or cancel it."""

    def __init__(self, client: Client, envelope: Envelope, inbox: asyncio.Queue[Envelope]) -> None:
        self.client = client
        self.envelope = envelope
        self._inbox = inbox
        self._final: ResultEvent | None = None
        self._holds_slot = True

    def _done(self) -> None:
        """Give the client's in-flight slot back, once."""
        if self._holds_slot:
            self._holds_slot = False
            self.client._slots.release()

    @property
    def id(self) -> str:
        """The request id (the envelope id), which `agentqueue cancel` takes."""
        return self.envelope.id

    @property
    def session_id(self) -> str:
        """The session the request belongs to."""
        return self.envelope.session_id

    async def events(self) -> AsyncIterator[ResultEvent]:
        """Each `ResultEvent` as it arrives: deltas, then the one terminal event."""
        if self._final is not None:
            yield self._final
            return
        deadline = self.envelope.deadline
        while True:
            wait = None if deadline is None else max(0.0, deadline + ANSWER_GRACE - time.time())
            with anyio.move_on_after(wait) as scope:
                reply = await self._inbox.get()
            if scope.cancelled_caught:
                self.client.router.forget(self.id)
                self._done()
                self._final = ResultEvent(
                    request_id=self.id,
                    kind="timed_out",
                    error=f"no answer within {ANSWER_GRACE:.0f} s after the request's deadline",
                )
                yield self._final
                return
            event = reply.body
            if not isinstance(event, ResultEvent):
                continue
            if event.terminal:
                self._final = event
                self._done()
            yield event
            if event.terminal:
                return

    async def result(self) -> ResultEvent:
        """The terminal event (whatever its kind), waiting for it."""
        async for event in self.events():
            if event.terminal:
                return event
        raise AssertionError("unreachable: events() always ends with a terminal event")

    async def final(self) -> ResultEvent:
        """The `final` event, or the matching `RequestError` for failed/timed_out/cancelled."""
        return raise_for_kind(await self.result())

    async def cancel(self) -> None:
        """Ask the worker running this request to stop it; the result becomes `cancelled`."""
        await self.client.cancel(self.id, session_id=self.session_id)


def raise_for_kind(event: ResultEvent) -> ResultEvent:
    """Return a `final` event; raise the `RequestError` that matches any other terminal kind."""
    if event.kind == "final":
        return event
    error = event.error or event.kind
    if event.kind == "timed_out":
        raise RequestTimedOut(error, request_id=event.request_id)
    if event.kind == "cancelled":
        raise RequestCancelled(error, request_id=event.request_id)
    if event.kind in ("rejected", "interrupted", "superseded"):
        raise RequestBusy(error, request_id=event.request_id, kind=event.kind)
    if event.kind not in RESULT_KINDS:  # a kind added after this client: name it, never drop it
        error = f"the worker answered {event.kind!r}, a result kind this client does not know:"
        error += f" {event.error or 'no error text'}"
    raise RequestFailed(error, request_id=event.request_id)


class Client:
    """Publishes requests to partition `partition_for(session_id)` and collects their replies.

    ```python
    async with Client("amqp://guest:guest@127.0.0.1/") as client:
        result = await client.call("What's the weather in Paris?", session_id="s1")
        print(result.text)
    ```
    """

    def __init__(
        self,
        broker: str | Broker | None = None,
        *,
        settings: Settings | None = None,
        topology: Topology | None = None,
        client_id: str | None = None,
        reply_queue: str | None = None,
        durable_replies: bool = False,
        default_timeout: float | None = 300.0,
        max_in_flight: int = 1024,
        store: str | None = None,
    ) -> None:
        # With no arguments, the same settings a worker takes (AGENTQUEUE_BROKER, _NAMESPACE, …).
        settings = Settings.load() if settings is None else settings
        broker = settings.broker if broker is None else broker
        self.broker = settings.open_broker(broker) if isinstance(broker, str) else broker
        self._owns_broker = isinstance(broker, str)
        self.topology = topology or settings.topology
        self._settings = settings  # its store holds the artifacts tools return by reference
        self.client_id = client_id or new_id()[:12]
        self.reply_queue = reply_queue or self.topology.reply_queue(f"client-{self.client_id}")
        self.durable_replies = durable_replies
        self.reply_queue_expiry = settings.reply_queue_expiry
        self.default_timeout = default_timeout
        self.router = ReplyRouter(self.broker, self.reply_queue)
        # Back-pressure: past this many unanswered requests, submit waits for an answer, so a
        # slow fleet of workers cannot make the client's memory grow without bound.
        self.max_in_flight = max_in_flight
        self._slots = anyio.Semaphore(max_in_flight)
        self._stack: contextlib.AsyncExitStack | None = None
        # Where `attach` finds kept streams: the workers' session store (opened on first use).
        self._settings = settings
        self.store_url = store or settings.store
        self._stream_log: StreamLog | None = None

    async def __aenter__(self) -> Client:
        stack = contextlib.AsyncExitStack()
        try:
            if self._owns_broker:
                await stack.enter_async_context(self.broker)
            await self.broker.declare(self.topology)
            await self.broker.declare_reply_queue(
                self.reply_queue,
                durable=self.durable_replies,
                expires=self.reply_queue_expiry if self.durable_replies else None,
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            await tg.start(self.router.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        if self._stream_log is not None:
            stream_log, self._stream_log = self._stream_log, None
            await stream_log.close()

    async def attach(
        self, request_id: str, *, after: int = 0, timeout: float | None = None
    ) -> AsyncIterator[ResultEvent]:
        """Follow a running or recently finished request from any process: replay its events
        after `seq` `after`, then each as it comes, to its terminal event.

        Only the request id is needed: its events are kept in the workers' session store
        (`store`, default the settings'). A retried attempt shows as a `delta` with
        `restart=True` and its `attempt`; the replay starts at the newest one, so an attacher
        never sees two attempts' deltas spliced. Raises `StreamNotKept` for a request whose
        events are not kept (unknown, not started, or past `stream_retention`). Past
        `timeout` seconds (default the client's) without the terminal event, it ends with a
        `timed_out` one.
        """
        timeout = self.default_timeout if timeout is None else timeout
        async for event in follow(self._streams(), request_id, after, timeout=timeout):
            yield event
            if event.terminal:
                return
        yield ResultEvent(
            request_id=request_id,
            kind="timed_out",
            error=f"attach saw no terminal event of request {request_id!r} within {timeout} s",
        )

    async def replay(self, request_id: str, *, after: int = 0) -> list[ResultEvent]:
        """The kept events `attach` would yield at once, without following; raises
        `StreamNotKept` as `attach` does."""
        return await replay(self._streams(), request_id, after)

    def _streams(self) -> StreamLog:
        if self._stream_log is None:
            # Whatever this process's stream_events says: the workers decide what is kept.
            self._stream_log = open_stream_log(
                self.store_url,
                max_events=self._settings.stream_events or DEFAULT_STREAM_EVENTS,
                retention=self._settings.stream_retention,
            )
        return self._stream_log

    def _request(self, request: AgentRequest | str, options: RequestOptions) -> Envelope:
        unknown = sorted(options.keys() - RequestOptions.__annotations__.keys())
        if unknown:
            known = ", ".join(RequestOptions.__annotations__)
            raise TypeError(f"unknown request option(s) {', '.join(unknown)}: use {known}")
        session_id, agent = options.get("session_id"), options.get("agent")
        user_id, on_busy = options.get("user_id"), options.get("on_busy")
        timeout = options.get("timeout")
        not_before = due_time(options.get("delay"), options.get("not_before"))
        if isinstance(request, str):
            request = AgentRequest(input=[user_message(request)])
        session = session_id or request.session_id or new_id()
        request = msgspec.structs.replace(
            request,
            session_id=session,
            agent=request.agent if agent is None else agent,
            user_id=request.user_id if user_id is None else user_id,
            on_busy=request.on_busy if on_busy is None else on_busy,
        )
        now = time.time()
        timeout = self.default_timeout if timeout is None else timeout
        request_id = request.id or new_id()
        if not_before is not None and not_before <= now:
            not_before = None  # due already: an ordinary request
        starts = now if not_before is None else not_before  # the timeout counts from here
        return Envelope(
            id=request_id,
            session_id=session,
            correlation_id=request_id,
            reply_to=self.reply_queue,
            body=request,
            created_at=now,
            deadline=None if timeout is None else starts + timeout,
            not_before=not_before,
        )

    async def submit(
        self, request: AgentRequest | str, **options: Unpack[RequestOptions]
    ) -> RequestHandle:
        """Publish a request (confirmed by the broker) and return a handle to its events.

        `on_busy`: what it does if its session is busy (default: the agent's, `enqueue`).
        `delay` (seconds) or `not_before` (an aware datetime or unix seconds): the request
        starts no earlier, and joins its session's turns only then; `timeout` counts from then.
        """
        return await self._send(self._request(request, options))

    async def resubmit(self, envelope: Envelope) -> RequestHandle:
        """Publish a prepared envelope (e.g. a dead letter's replay) with this client as its
        caller, and return a handle to its events."""
        caller = msgspec.structs.replace(
            envelope, reply_to=self.reply_queue, correlation_id=envelope.id
        )
        return await self._send(caller)

    async def _send(self, envelope: Envelope) -> RequestHandle:
        await self._slots.acquire()  # released when the handle's terminal event is read
        inbox = self.router.expect(envelope.id)
        # A broker that can hold the message back (MNS) is asked to; otherwise the worker
        # receiving it parks it in a timer of the session store (see workers/delayed.py).
        wait = 0.0 if envelope.not_before is None else envelope.not_before - time.time()
        held = min(max(wait, 0.0), self.broker.max_delay)
        try:
            await self._publish(envelope, delay=held)
        except BaseException:
            self.router.forget(envelope.id)
            self._slots.release()
            raise
        return RequestHandle(self, envelope, inbox)

    async def call(
        self, request: AgentRequest | str, **options: Unpack[RequestOptions]
    ) -> ResultEvent:
        """Run a request and return its `final` event; raises `RequestError` otherwise."""
        with spans.round_trip("call", options.get("agent")) as trip, trip.current():
            handle = await self.submit(request, **options)
            return await handle.final()

    async def stream(
        self, request: AgentRequest | str, **options: Unpack[RequestOptions]
    ) -> AsyncIterator[ResultEvent]:
        """Run a request and yield its events as they come: deltas, then the terminal one."""
        with spans.round_trip("stream", options.get("agent")) as trip:
            with trip.current():  # never across a yield: the caller's code is not ours to trace
                handle = await self.submit(request, **options)
            async for event in handle.events():
                trip.result(event)
                yield event

    async def cancel(self, request_id: str, *, session_id: str) -> None:
        """Publish a `Cancel` on the session's partition, where the request runs."""
        envelope = Envelope(
            id=new_id(),
            session_id=session_id,
            body=Cancel(request_id=request_id),
            created_at=time.time(),
        )
        await self._publish(envelope)

    async def _publish(self, envelope: Envelope, *, delay: float = 0.0) -> None:
        """Publish `envelope` on its queue inside a `publish` span whose context it carries."""
        queue = self.topology.route(envelope)
        with spans.publishing(self.broker, queue, envelope):
            await self.broker.publish(queue, encode(envelope), delay=delay)

    async def _ask(
        self, envelope: Envelope, timeout: float | None, silence: str, request_id: str
    ) -> Envelope:
        """Publish `envelope` and wait for its one reply; `RequestTimedOut` names `silence`."""
        inbox = self.router.expect(envelope.id)
        try:
            await self._publish(envelope)
            wait = None if timeout is None else timeout + ANSWER_GRACE
            with anyio.fail_after(wait):
                return await inbox.get()
        except TimeoutError:
            raise RequestTimedOut(f"{silence} within {wait} s", request_id=request_id) from None
        finally:
            self.router.forget(envelope.id)

    async def approve(
        self,
        request_id: str,
        call_id: str | None = None,
        *,
        session_id: str,
        timeout: float | None = None,
    ) -> ResultEvent:
        """Approve a paused request's tool call (None: the one it waits on): the tool runs once
        and the turn resumes; returns the answer its caller gets too."""
        return await self._decide(Approval(request_id, True, call_id), session_id, timeout)

    async def deny(
        self,
        request_id: str,
        call_id: str | None = None,
        *,
        session_id: str,
        reason: str | None = None,
        timeout: float | None = None,
    ) -> ResultEvent:
        """Deny a paused request's tool call: the turn resumes with the denial (and `reason`)
        as the tool's error, for the agent to explain; returns the answer its caller gets too."""
        return await self._decide(Approval(request_id, False, call_id, reason), session_id, timeout)

    async def _decide(
        self, decision: Approval, session_id: str, timeout: float | None
    ) -> ResultEvent:
        """Publish a decision on the session's partition (routed like `Cancel`) and wait for
        the resumed turn's answer; a decision made before is answered from the store."""
        event_id = new_id()
        now = time.time()
        timeout = self.default_timeout if timeout is None else timeout
        envelope = Envelope(
            id=event_id,
            session_id=session_id,
            correlation_id=event_id,
            reply_to=self.reply_queue,
            body=decision,
            created_at=now,
        )
        reply = await self._ask(
            envelope,
            timeout,
            f"no answer to the decision on request {decision.request_id}",
            decision.request_id,
        )
        result = reply.body
        if not isinstance(result, ResultEvent):
            raise RequestFailed(
                f"unexpected {reply.type} reply to a decision", request_id=decision.request_id
            )
        if result.kind == "failed":
            raise RequestFailed(result.error or "failed", request_id=decision.request_id)
        return result

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run a registered tool on a tool worker and return its output text."""
        async with self._slots:
            with spans.round_trip("call_tool", name, tool=True) as trip, trip.current():
                return await self._call_tool(name, arguments, session_id, timeout)

    async def end_session(self, session_id: str, *, timeout: float | None = None) -> str:
        """End a session's sandboxes: closed on the worker owning its tool partition, their
        workspaces and snapshots deleted; returns what was closed."""
        return await self.call_tool(END_SESSION_TOOL, session_id=session_id, timeout=timeout)

    async def fetch_artifact(self, ref: str, *, store: str | None = None) -> bytes:
        """The bytes of an image a tool returned by reference (`Image.ref`).

        Read from `store` (a store URL), else the store these settings name: the one the tool
        workers keep artifacts in.
        """
        key = artifact_key(ref)
        opened = open_store(store) if store else self._settings.open_store()
        try:
            data = await opened.get_artifact(key)
        finally:
            await opened.close()
        if data is None:
            where = redact_url(store or self._settings.store)
            raise LookupError(
                f"artifact {ref!r} is not in the store {where!r}:"
                " it expired (artifacts are kept as long as handled results) or another store"
                " holds it; pass store= the tool workers' store URL"
            )
        return data

    async def _call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        session_id: str | None,
        timeout: float | None,
    ) -> str:
        call_id = new_id()
        now = time.time()
        timeout = self.default_timeout if timeout is None else timeout
        envelope = Envelope(
            id=call_id,
            session_id=session_id or call_id,
            correlation_id=call_id,
            reply_to=self.reply_queue,
            body=ToolCall(name=name, arguments=arguments or {}, call_id=call_id, timeout=timeout),
            created_at=now,
            deadline=None if timeout is None else now + timeout,
        )
        reply = await self._ask(envelope, timeout, f"tool {name} gave no answer", call_id)
        result = reply.body
        if isinstance(result, ToolResult):
            if result.ok:
                return result.output
            raise RequestFailed(result.output, request_id=call_id)
        if isinstance(result, ResultEvent):
            raise_for_kind(result)
        raise RequestFailed(
            f"unexpected {reply.type} reply to tool call {name}", request_id=call_id
        )
