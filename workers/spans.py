"""OpenTelemetry context and spans for the hops a request makes: context in `Envelope.trace`.

Spans follow the messaging conventions: `publish <queue>` (PRODUCER) wherever an envelope is
published, by the client, a batch or an agent calling a remote tool; `process <queue>`
(CONSUMER) wherever one is handled, continuing the context the publisher put into the
envelope: the `Tracing` middleware (`workers/middleware/tracing.py`) makes those, and the
`publish` spans of replies. The context rides in the body because MNS messages have no
headers, and the broker only carries it: it never looks inside a request. AgentScope's
TracingMiddleware adds `invoke_agent`, `chat` and `execute_tool` under `process`, and a tool
call published from inside `execute_tool` continues that span on the tool worker.

With no provider installed (the API's default) every helper returns a shared no-op after reading
the API's global, and builds no attribute dicts, so tracing off costs nothing per message.
The metric instruments live in `broker/metrics.py`; the `Metrics` middleware records them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentqueue.protocol.messages import Envelope, ResultEvent, TraceContext

SCOPE = "agentqueue"
NULL: AbstractContextManager[None] = contextlib.nullcontext()
_propagator = TraceContextTextMapPropagator()
_SYSTEMS = {
    "memory": "memory",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "mns": "aliyun_mns",
    "mnss": "aliyun_mns",
}


_system_of_url: dict[str, str] = {}


class _Cache:
    provider: object = None
    tracer: trace.Tracer | None = None


_cache = _Cache()
# get_tracer_provider() tests os.environ on every call until a provider is set, and a miss there
# costs microseconds. So read the API's global (None until set) and call the getter only once
# one is set, or when the variable naming a provider class is set.
_read_global = getattr(trace, "_TRACER_PROVIDER", False) is not False
_provider_from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def tracer() -> trace.Tracer | None:
    """Our tracer, or None while no tracer provider is installed (tracing off)."""
    if _read_global and trace._TRACER_PROVIDER is None and not _provider_from_env:
        return None
    provider = trace.get_tracer_provider()
    if provider is not _cache.provider:
        _cache.provider = provider
        off = isinstance(provider, ProxyTracerProvider | NoOpTracerProvider)
        _cache.tracer = None if off else provider.get_tracer(SCOPE)
    return _cache.tracer


def enabled() -> bool:
    """True when a tracer provider is installed, so spans are recorded."""
    return tracer() is not None


# --- context in the envelope -----------------------------------------------------------------


def trace_context(span: Span) -> TraceContext | None:
    """The W3C form of a span's context, for `Envelope.trace`."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return TraceContext(
        traceparent=f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}",
        tracestate=state or None,
    )


def extract(carried: TraceContext | None) -> Context:
    """The context an envelope carries, or an empty one (a new trace) when it carries none."""
    if carried is None:
        return Context()
    carrier = {"traceparent": carried.traceparent}
    if carried.tracestate:
        carrier["tracestate"] = carried.tracestate
    return _propagator.extract(carrier, context=Context())


def system(broker: Any) -> str:
    url = getattr(broker, "url", "") or ""
    system = _system_of_url.get(url)
    if system is None:
        scheme = urlsplit(url).scheme
        system = _system_of_url[url] = _SYSTEMS.get(scheme, scheme or "unknown")
    return system


def _partition(queue: str) -> int | None:
    family, _, index = queue.rpartition("-")
    if index.isdigit() and (family.endswith("-requests") or family.endswith("-tools")):
        return int(index)
    return None


def message_attributes(
    broker: Any, queue: str, operation: str, kind: str, message_id: str, envelope: Envelope
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": system(broker),
        "messaging.destination.name": queue,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.message.id": message_id,
        "messaging.message.conversation_id": envelope.correlation_id or envelope.id,
        "agentqueue.session_id": envelope.session_id,
        "agentqueue.attempt": envelope.attempt,
    }
    partition = _partition(queue)
    if partition is not None:
        attributes["agentqueue.partition"] = partition
    return attributes


# --- publish -----------------------------------------------------------------------------------


def publishing(broker: Any, queue: str, envelope: Envelope) -> AbstractContextManager[None]:
    """A `publish <queue>` span whose context is written into `envelope.trace`; encode inside it.

    Off, the envelope keeps the trace it was built with, so context from upstream passes through.
    """
    tr = tracer()
    if tr is None:
        return NULL
    return publish_span(tr, broker, queue, envelope, envelope.id, envelope)


@contextlib.contextmanager
def publish_span(
    tr: trace.Tracer,
    broker: Any,
    queue: str,
    about: Envelope,
    message_id: str,
    target: Envelope | None,
) -> Iterator[None]:
    attributes = message_attributes(broker, queue, "publish", "send", message_id, about)
    if target is None:  # a reply: `about` is the request it answers
        del attributes["agentqueue.attempt"]
    with tr.start_as_current_span(
        f"publish {queue}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        if target is not None:
            target.trace = trace_context(span) or target.trace
        yield


def queue_wait(envelope: Envelope) -> float | None:
    """Seconds from the envelope's creation until now, never negative; None without a time."""
    # created_at is the publisher's clock; skew must not make the wait negative.
    return max(0.0, time.time() - envelope.created_at) if envelope.created_at else None


# --- the client's round trip -----------------------------------------------------------------


class RoundTrip:
    """A CLIENT span from publishing a request to its answer; never left current across a yield."""

    __slots__ = ("span",)

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def __enter__(self) -> RoundTrip:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        span = self.span
        if span is None:
            return
        if isinstance(exc, Exception):
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        span.end()

    def current(self) -> AbstractContextManager[Any]:
        """Make the span current (the parent of the publish span) for a block without yields."""
        if self.span is None:
            return NULL
        return trace.use_span(self.span, record_exception=False, set_status_on_exception=False)

    def result(self, event: ResultEvent) -> None:
        """Note a result event: a terminal one other than `final` makes the span ERROR."""
        if self.span is not None and event.terminal and event.kind != "final":
            self.span.set_status(
                StatusCode.ERROR, f"{event.kind}: {event.error or ''}".rstrip(": ")
            )


_NO_TRIP = RoundTrip(None)


def round_trip(operation: str, target: str | None, *, tool: bool = False) -> RoundTrip:
    """A `<operation> <agent or tool>` client span (not yet current), or a shared no-op."""
    tr = tracer()
    if tr is None:
        return _NO_TRIP
    attributes = {"agentqueue.operation": operation}
    if target:
        attributes["gen_ai.tool.name" if tool else "gen_ai.agent.name"] = target
    name = f"{operation} {target}" if target else operation
    return RoundTrip(tr.start_span(name, kind=SpanKind.CLIENT, attributes=attributes))
