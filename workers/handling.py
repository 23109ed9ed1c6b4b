"""What a handler is: the code that runs one kind of event body (an agent turn, a tool call).

The pipeline (`workers/pipeline/`) gives a handler the event, the session's state, a way to
stream deltas (`emit`) and a `RunControl` that a `Cancel` or a deadline uses to interrupt it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agentqueue.protocol.messages import Body, Envelope, ResultEvent, ToolCall, ToolResult

Emit = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class HandlerResult:
    """What a handler produced: the reply body and the session's new state (None: unchanged)."""

    body: Body
    state: str | None = None


class RunControl:
    """Lets a `Cancel` or a deadline interrupt a running handler, and tells the handler why."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "cancelled", "timed_out" or "interrupted" once stopped
        self.discard_state = False  # a rollback: the session's state is not saved
        self._task: asyncio.Task[HandlerResult] | None = None

    def interrupt(self, reason: str, *, discard_state: bool = False) -> None:
        """Stop the handler; the first reason wins. `discard_state` drops its state changes."""
        if self.reason is None:
            self.reason = reason
            self.discard_state = discard_state
            if self._task is not None:
                self._task.cancel()

    async def run(self, coro: Awaitable[HandlerResult]) -> HandlerResult | None:
        """Run the handler; None when it was interrupted without producing a result."""
        self._task = asyncio.ensure_future(coro)
        if self.reason is not None:
            self._task.cancel()
        try:
            return await self._task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.reason is not None and current is not None and not current.cancelling():
                return None
            raise


class Handler(Protocol):
    """Runs one kind of event body."""

    uses_state: bool

    def store_key(self, envelope: Envelope) -> str:
        """The store record this event is leased, deduplicated and saved under."""
        ...

    def deduplicates(self, envelope: Envelope) -> bool:
        """Whether this event's effect must be recorded so a redelivery is not run again."""
        ...

    async def handle(
        self, envelope: Envelope, state: str | None, emit: Emit, control: RunControl
    ) -> HandlerResult: ...


def failure_body(envelope: Envelope, kind: str, error: str) -> Body:
    """The reply that tells the caller an event did not succeed, shaped for its caller."""
    body = envelope.body
    if isinstance(body, ToolCall):
        return ToolResult(
            call_id=body.call_id or envelope.id, name=body.name, ok=False, output=error
        )
    return ResultEvent(request_id=envelope.id, kind=kind, error=error)
