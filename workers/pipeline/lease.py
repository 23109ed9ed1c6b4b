"""The lease stage: one worker at a time writes a session, fenced, and runs its event in order."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.guards import answer_from_store
from agentqueue.workers.session_store import Lease as SessionLease

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")


class Lease:
    """Holds the session's lease around run and commit; a lost lease runs the event again."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, event: Event, call_next: Next) -> None:
        assert event.handler is not None and event.envelope is not None
        if not (event.dedup or event.handler.uses_state):
            await call_next(event)  # nothing to record, no state to guard: an idempotent tool
            return
        p = self.pipeline
        for attempt in range(1, p.retry.max_attempts + 1):
            event.lease = await self._acquire(event.key)
            if event.lease is None:
                event.hand_back()  # shutting down while another worker holds the session
                return
            try:
                # Asked again under the lease: another worker with a copy of this event (a
                # redelivery after a reconnect) may have finished it while we waited for it.
                if not await answer_from_store(p, event):
                    await call_next(event)
                return
            except LeaseLost as exc:
                # Not handed back: the session's later events, queued behind this one in its
                # lane, would then run before it. Run it again here, in order, on a new lease.
                log.warning("%s; running event %s again (try %d)", exc, event.envelope.id, attempt)
            finally:
                await p.store.release(event.lease)
        event.dead_letter(
            f"lost the lease on session {event.key!r} {p.retry.max_attempts} times while"
            f" handling the event: it runs longer than the lease ({p.lease_ttl:.0f} s);"
            " raise the lease TTL (AGENTQUEUE_LEASE_TTL)"
        )

    async def _acquire(self, key: str) -> SessionLease | None:
        p = self.pipeline
        delay = 0.01
        while p.accepting:
            lease = await p.store.acquire(key, p.worker_id, p.lease_ttl)
            if lease is not None:
                return lease
            # Another worker still runs this session (a hand-over in progress): wait for it.
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return None
