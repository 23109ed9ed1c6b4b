"""OpenTelemetry spans for every event, as pipeline middleware: what a request's trace shows.

`process <queue>` (CONSUMER) continues the trace the publisher put in the envelope and stays
current while the handler runs (AgentScope's spans nest under it) and while the event is
settled (its reply `publish` spans and its `dead_letter` event belong to it). The worker reads
the request here, above the broker: the tool's name, the attempt, the reply's id. With no
provider installed, each hook costs one check (see `workers/spans.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from agentqueue.broker.base import Broker
from agentqueue.protocol.messages import Envelope, ToolCall, ToolResult
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.spans import (
    NULL,
    extract,
    message_attributes,
    publish_span,
    queue_wait,
    tracer,
)


class _MessageId(msgspec.Struct):
    id: str = ""


_message_id = msgspec.json.Decoder(_MessageId)


class Tracing(Middleware):
    """Spans and span events for the events of one worker."""

    wraps_settlement = True

    def __init__(self, broker: Broker, worker_id: str) -> None:
        self.broker = broker
        self.worker_id = worker_id

    async def process(self, event: Event, call_next: Next) -> None:
        assert event.envelope is not None
        span = processing(
            self.broker,
            event.envelope,
            event.queue,
            worker=self.worker_id,
            delivery_count=event.delivery_count,
        )
        with span:
            await call_next(event)
            body = event.result.body if event.result is not None else None
            if isinstance(body, ToolResult) and not body.ok:
                # The tool failed, even though its failure is a reply.
                attributes = {"gen_ai.tool.name": body.name, "exception.message": body.output}
                _mark_error("tool_failed", attributes, body.output)

    def publishing(self, event: Event, queue: str, message: bytes) -> AbstractContextManager[None]:
        assert event.envelope is not None
        return publishing_reply(self.broker, queue, message, event.envelope)

    def retrying(self, event: Event, error: BaseException, attempt: int, delay: float) -> None:
        """A `retry` event on the current span: the failed attempt, its error, the next wait."""
        span = trace.get_current_span()
        if span.is_recording():
            span.record_exception(error, attributes={"agentqueue.attempt": attempt})
            span.add_event(
                "retry",
                {
                    "agentqueue.attempt": attempt,
                    "agentqueue.retry_delay_s": delay,
                    "exception.type": type(error).__name__,
                    "exception.message": str(error),
                },
            )

    def dead_lettering(self, event: Event, reason: str) -> None:
        """Mark the current span ERROR with a `dead_letter` event (and the error behind it)."""
        span = trace.get_current_span()
        if span.is_recording() and isinstance(event.error, Exception):
            span.record_exception(event.error)
        _mark_error("dead_letter", {"agentqueue.reason": reason}, reason)


def _mark_error(event: str, attributes: dict[str, Any], description: str) -> None:
    """An `event` on the current span, which it marks ERROR."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(event, attributes)
        span.set_status(StatusCode.ERROR, description)


def publishing_reply(
    broker: Any, queue: str, reply: bytes, request: Envelope
) -> AbstractContextManager[None]:
    """A `publish <queue>` span for an already encoded reply to `request`."""
    tr = tracer()
    if tr is None:
        return NULL
    return publish_span(tr, broker, queue, request, _message_id.decode(reply).id, None)


def processing(
    broker: Any, envelope: Envelope, queue: str | None, *, worker: str, delivery_count: int = 1
) -> AbstractContextManager[None]:
    """A `process <queue>` span continuing the envelope's trace (metrics: `Metrics` middleware)."""
    tr = tracer()
    if tr is None:
        return NULL
    return _process(tr, broker, envelope, queue, worker, delivery_count)


@contextlib.contextmanager
def _process(
    tr: trace.Tracer,
    broker: Any,
    envelope: Envelope,
    queue: str | None,
    worker: str,
    delivery_count: int,
) -> Iterator[None]:
    body = envelope.body
    queue = queue or ("tools" if isinstance(body, ToolCall) else "requests")
    wait = queue_wait(envelope)
    attributes = message_attributes(broker, queue, "process", "process", envelope.id, envelope)
    attributes["agentqueue.attempt"] = max(envelope.attempt, delivery_count)
    attributes["agentqueue.worker"] = worker
    if wait is not None:
        attributes["agentqueue.queue_wait_s"] = wait
    if isinstance(body, ToolCall):
        attributes["gen_ai.tool.name"] = body.name
    with tr.start_as_current_span(
        f"process {queue}",
        context=extract(envelope.trace),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield
