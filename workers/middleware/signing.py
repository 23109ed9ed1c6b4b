"""Signed envelopes, checked on arrival: signature, freshness, replays.

With a key ring configured, an envelope runs only if it carries a valid signature of one of
the ring's keys (checked on the raw bytes, before they are decoded), was created within the
freshness window, and its signed bytes have not been seen fresh before within that window (a
replay). Anything else is refused with a reason, which goes on the dead letter. Signing what a
worker publishes is the broker's job (`Broker.signing`), so every publish path is covered.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware


class Signing(Middleware):
    """Admits only fresh, unreplayed envelopes signed with one of `keys`."""

    def __init__(self, keys: KeyRing, *, window: float = 300.0, remembered: int = 200_000):
        self.keys = keys
        self.window = window
        self._remembered = remembered
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when first seen

    async def admit(self, event: Event, call_next: Next) -> None:
        try:
            self.keys.verify(event.data)
        except ProtocolError as exc:
            event.refuse(str(exc))
            return
        await call_next(event)
        envelope = event.envelope
        if envelope is None:
            return  # refused by a later stage
        now = time.time()
        age = now - envelope.created_at
        if abs(age) > self.window:
            event.refuse(
                f"stale envelope refused: created {age:.0f} s ago, outside the {self.window:.0f} s"
                " window signed envelopes must arrive in"
            )
            return
        signature = (envelope.sig or "").encode()
        if event.redelivered:
            return  # a broker redelivery is the same message, not a replay
        if signature in self._seen:
            event.refuse(
                f"replayed envelope refused: {envelope.id} with this signature was already received"
            )
            return
        self._remember(signature, now)

    def _remember(self, signature: bytes, now: float) -> None:
        self._seen[signature] = now
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) <= self._remembered:
                break
            del self._seen[oldest]
