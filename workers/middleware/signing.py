"""Signed envelopes, checked on arrival: signature, freshness, replays.

With a key ring configured, an envelope runs only if it carries a valid signature of one of
the ring's keys (checked on the raw bytes, before they are decoded), was created within the
freshness window, and its signed bytes were not received before as another message (a replay;
the window is kept in the session store, see `workers/admission.py`). Anything else is refused
with a reason, which goes on the dead letter. Signing what a worker publishes is the broker's
job (`Broker.signing`), so every publish path is covered.
"""

from __future__ import annotations

from agentqueue.protocol.admission import DEFAULT_WINDOW, Refusal
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.admission import Admission
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.session_store import SessionStore


class Signing(Middleware):
    """Admits only fresh, unreplayed envelopes signed with one of `keys`."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        store: SessionStore,
        max_size: int,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self.admission = Admission(keys, store=store, max_size=max_size, window=window)

    async def admit(self, event: Event, call_next: Next) -> None:
        verdict = await self.admission.admit(
            event.data, redelivered=event.redelivered, message_id=event.message_id
        )
        if isinstance(verdict, Refusal):
            event.refuse(verdict)
            return
        event.envelope = verdict  # decoded once, here, after the signature was proven
        await call_next(event)
