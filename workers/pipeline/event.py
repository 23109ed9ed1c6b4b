"""One event on its way through the pipeline: what came in, what was decided, how to settle it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from agentqueue.protocol.admission import Refusal
from agentqueue.protocol.messages import Envelope
from agentqueue.workers.handling import Handler, HandlerResult
from agentqueue.workers.session_store import Lease

Outcome = Literal["ack", "hand_back", "dead_letter"]


class Settler(Protocol):
    """How the consumer that received an event settles the message it came in."""

    async def ack(self) -> None: ...

    async def hand_back(self) -> None: ...

    async def dead_letter(
        self, reason: str, envelope_id: str | None, session_id: str | None
    ) -> None: ...


@dataclass(slots=True, eq=False)
class Event:
    """A received message and what the stages have found out and decided about it.

    Stages only decide (`ack`, `hand_back`, `dead_letter`); the settle stage carries the
    decision out, so every path through the pipeline ends in exactly one settlement.
    """

    data: bytes  # the message as received
    settler: Settler
    queue: str | None = None
    delivery_count: int = 1  # as the broker counts deliveries
    runs: int = 0  # runs started and not finished, counted in the store (see `CountRuns`)
    redelivered: bool = False  # set by the broker itself, never by a publisher
    message_id: str | None = None  # the broker's own id of the message, where it has one
    envelope: Envelope | None = None  # once admitted
    refusal: Refusal | None = None  # why admission refused it, and whom to tell
    handler: Handler | None = None
    key: str = ""  # the session lane and store record
    dedup: bool = False
    lease: Lease | None = None
    result: HandlerResult | None = None
    reply: bytes | None = None  # the answer to publish when the event is acked
    reply_stored: bool = False  # the answer is in the session store too (fetchable later)
    outcome: Outcome | None = None
    reason: str = ""  # why it is dead-lettered
    error: BaseException | None = None  # the exception behind a dead letter, if any
    extra: dict[str, Any] = field(default_factory=dict)  # room for middleware

    def refuse(self, refusal: Refusal) -> None:
        """Admission's verdict: not run, dead-lettered with the refusal's reason."""
        self.refusal = refusal

    def ack(self, reply: bytes | None = None) -> None:
        """Done: publish `reply` (if any) to the caller, then ack."""
        self.outcome, self.reply = "ack", reply

    def hand_back(self) -> None:
        """Not ours to run now: give the message back to the broker, unsettled."""
        self.outcome = "hand_back"

    def dead_letter(self, reason: str, error: BaseException | None = None) -> None:
        """Give up: dead-letter with `reason` and answer the caller `failed`."""
        self.outcome, self.reason, self.error = "dead_letter", reason, error

    @property
    def decided(self) -> bool:
        """Whether a stage has decided how the event is settled."""
        return self.outcome is not None


Next = Callable[[Event], Awaitable[None]]
# A stage or middleware hook of a chain: `async (event, call_next)`.
Layer = Callable[[Event, Next], Awaitable[None]]
