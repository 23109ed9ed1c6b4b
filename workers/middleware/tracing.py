"""OpenTelemetry spans and metrics for every event, as pipeline middleware.

`process <queue>` (CONSUMER) continues the trace the publisher put in the envelope and stays
current while the handler runs (AgentScope's spans nest under it) and while the event is
settled (its reply `publish` spans and its `dead_letter` event belong to it). With no
provider installed, each hook costs one check (see `broker/tracing.py`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from agentqueue.broker import tracing
from agentqueue.broker.base import Broker
from agentqueue.protocol.messages import ToolResult
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware


class Tracing(Middleware):
    """Spans, span events and metrics for the events of one worker."""

    wraps_settlement = True

    def __init__(self, broker: Broker, worker_id: str) -> None:
        self.broker = broker
        self.worker_id = worker_id

    async def process(self, event: Event, call_next: Next) -> None:
        assert event.envelope is not None
        span = tracing.processing(
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
                tracing.record_tool_failure(body.name, body.output)

    def publishing(self, event: Event, queue: str, message: bytes) -> AbstractContextManager[None]:
        assert event.envelope is not None
        return tracing.publishing_reply(self.broker, queue, message, event.envelope)

    def retrying(self, event: Event, error: BaseException, attempt: int, delay: float) -> None:
        assert event.envelope is not None
        tracing.record_retry(event.envelope, error, attempt, delay)

    def dead_lettering(self, event: Event, reason: str) -> None:
        assert event.envelope is not None
        tracing.record_dead_letter(event.envelope, reason, event.error)
