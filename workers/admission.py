"""What a worker checks before it decodes and runs a message: signature, freshness, replays.

With a key ring configured, an envelope runs only if it carries a valid signature of one of the
ring's keys, was created within the freshness window, and its signed bytes have not been seen
fresh before within that window (a replay). Anything else is refused with a reason, which the
worker puts on the dead letter.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from agentqueue.protocol.codec import decode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import Envelope
from agentqueue.protocol.signing import KeyRing


class Admission:
    """Decode a delivery's bytes into an envelope, or raise `ProtocolError` saying why not."""

    def __init__(
        self,
        keys: KeyRing | None,
        *,
        max_size: int,
        window: float = 300.0,
        remembered: int = 200_000,
    ) -> None:
        self.keys = keys
        self.max_size = max_size
        self.window = window
        self._remembered = remembered
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when first seen

    def admit(self, data: bytes, delivery_count: int) -> Envelope:
        """The decoded envelope when it may run."""
        if self.keys is None:
            return decode(data, max_size=self.max_size)
        if len(data) > self.max_size:
            return decode(data, max_size=self.max_size)  # raises the size error
        self.keys.verify(data)
        envelope = decode(data, max_size=self.max_size)
        now = time.time()
        age = now - envelope.created_at
        if abs(age) > self.window:
            raise ProtocolError(
                f"stale envelope refused: created {age:.0f} s ago, outside the {self.window:.0f} s"
                " window signed envelopes must arrive in",
                field="$.created_at",
            )
        signature = (envelope.sig or "").encode()
        if delivery_count == 1:  # a broker redelivery is the same message, not a replay
            if signature in self._seen:
                raise ProtocolError(
                    f"replayed envelope refused: {envelope.id} with this signature was already"
                    " received",
                    field="$.sig",
                )
            self._remember(signature, now)
        return envelope

    def _remember(self, signature: bytes, now: float) -> None:
        self._seen[signature] = now
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) <= self._remembered:
                break
            del self._seen[oldest]
