"""The one extension point of the pipeline: middleware around its stages.

A middleware is an onion layer, as in Starlette: `async def process(event, call_next)` runs
code before and after everything inside it, and may refuse an event by raising `Refused`.
An onion rather than before/after hooks because the behaviour that needs the seam wraps
(a span that must be current while the handler runs, a timer, a lock, a rate-limit slot held
for the turn) and an onion layer keeps each of those in one `with` block.

Two layers and three notifications, each optional (the defaults pass through and are left out
of the chain, so a middleware costs only what it overrides):

- `admit(event, call_next)`: on receipt, before the event has a session lane. The envelope is
  not decoded yet when it starts (`event.data` only); after `call_next` it is decoded and
  routed (`event.key` is its lane), unless a stage refused it (`event.refusal`) or acted on it
  already (`event.decided`: a cancel). Signature checks and busy-session policies live here.
- `process(event, call_next)`: in the session lane, around routing, dedup, lease, run and
  commit; `event.envelope` is set. After `call_next` the outcome is decided
  (`event.outcome`, `event.reply`, `event.reason`) but not yet carried out.
- `publishing(event, queue, message)`: a context manager around each reply published.
- `retrying(event, error, attempt, delay)`, `dead_lettering(event, reason)` and
  `abandoned(event)` (received, then handed back unprocessed): notices.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from agentqueue.workers.errors import Refused
from agentqueue.workers.pipeline.event import Event, Next

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

_NULL: AbstractContextManager[None] = contextlib.nullcontext()


class Middleware:
    """Behaviour around the pipeline's stages; override only the hooks you need."""

    # True for middleware that observes the settlement too (tracing: the reply and the dead
    # letter belong in its span). Such middleware must not refuse events.
    wraps_settlement: bool = False
    # The envelope types (`Envelope.type`) whose processing this middleware wraps; None: all.
    # Events of other types never pass its `process` (a tool call skips the agent-turn layers).
    processes: frozenset[str] | None = None

    def bind(self, pipeline: Pipeline) -> None:
        """Called once with the pipeline this middleware is part of (to reach what it shares)."""

    async def admit(self, event: Event, call_next: Next) -> None:
        """Around admission of the raw bytes (before decoding), and routing."""
        await call_next(event)

    async def process(self, event: Event, call_next: Next) -> None:
        """Around the handling of one admitted event, inside its session lane."""
        await call_next(event)

    def publishing(self, event: Event, queue: str, message: bytes) -> AbstractContextManager[None]:
        """Around each reply published for `event` (its deltas, its answer)."""
        return _NULL

    def retrying(self, event: Event, error: BaseException, attempt: int, delay: float) -> None:
        """Attempt `attempt` failed with `error`; the next one starts in `delay` seconds."""

    def dead_lettering(self, event: Event, reason: str) -> None:
        """The event is about to be dead-lettered with `reason`."""

    def abandoned(self, event: Event) -> None:
        """A received event goes back to the broker unprocessed (its queue is being let go)."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether `middleware` implements `hook` itself (so the pipeline must call it)."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


__all__ = ["Middleware", "Refused", "overrides"]
