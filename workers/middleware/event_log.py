"""One INFO line per handled event: id, session, kind, outcome and milliseconds."""

from __future__ import annotations

import logging
import time

from agentqueue.protocol.messages import ResultEvent, ToolResult
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware

log = logging.getLogger("agentqueue.worker")


class EventLog(Middleware):
    """Logs every event the worker handled and how it ended, like a web server's access log."""

    wraps_settlement = True  # the outcome is known (not yet carried out) when the line is written

    async def process(self, event: Event, call_next: Next) -> None:
        started = time.perf_counter()
        try:
            await call_next(event)
        finally:
            if log.isEnabledFor(logging.INFO):
                envelope = event.envelope
                assert envelope is not None
                log.info(
                    "event %s session %s %s %s %.0f ms",
                    envelope.id,
                    envelope.session_id,
                    envelope.type,
                    outcome(event),
                    (time.perf_counter() - started) * 1000,
                )


def outcome(event: Event) -> str:
    """What became of the event, in one word or a short phrase."""
    if event.outcome == "dead_letter":
        return f"dead-lettered ({event.reason})"
    if event.outcome == "hand_back":
        return "handed back"
    if event.outcome is None:
        return "interrupted"
    body = event.result.body if event.result is not None else None
    if isinstance(body, ResultEvent):
        return body.kind
    if isinstance(body, ToolResult):
        return "ok" if body.ok else f"failed ({body.output})"
    return "done"
