"""The admit stage of a consumer: the protocol's checks plus a replay window in the store.

With a key ring configured, an envelope runs only if it carries a valid signature of one of the
ring's keys, was created within the freshness window, and its signed bytes were not received
before as another message: a second copy that the broker did not itself redeliver is a replay.
Only what the broker sets decides that (AMQP's `redelivered` flag, MNS's dequeue count, the MNS
message id an FC trigger passes on), never a header a publisher can set. The window lives in the
session store's backend, so it holds across processes and restarts, and its entries expire.
Anything else is refused with a reason, which the consumer puts on the dead letter.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from agentqueue.broker.urls import SIGNING_KEYS_ENV
from agentqueue.protocol import admission as protocol
from agentqueue.protocol.admission import DEFAULT_WINDOW, Refusal
from agentqueue.protocol.codec import DEFAULT_MAX_SIZE
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import Envelope
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.errors import SigningRequired
from agentqueue.workers.session_store import SessionStore

log = logging.getLogger("agentqueue.worker")

STORE_PAUSE_MAX = 5.0  # the longest wait between tries of a store that does not answer

__all__ = ["Admission", "Refusal", "check_signing"]


class Admission:
    """Admit a delivery's bytes as an `Envelope`, or refuse them with a reason; never raises."""

    def __init__(
        self,
        keys: KeyRing | None,
        *,
        store: SessionStore,
        max_size: int = DEFAULT_MAX_SIZE,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self.keys = keys
        self.store = store
        self.max_size = max_size
        self.window = window

    async def admit(
        self, data: Any, *, redelivered: bool, message_id: str | None = None
    ) -> Envelope | Refusal:
        """The envelope when it may run, else the `Refusal`.

        `redelivered`: the broker itself says it delivered this message before (never a
        publisher's header). `message_id`: the broker's id of the message where a retry keeps
        it and a new publish gets a new one (an FC trigger's MNS message id), else None.
        """
        verdict = protocol.admit(data, self.keys, max_size=self.max_size, window=self.window)
        if self.keys is None or isinstance(verdict, Refusal):
            return verdict
        assert verdict.sig is not None  # verified, so signed
        # Kept for two windows: an envelope dated up to one window ahead stays fresh that long.
        # Without a broker message id, no later copy can prove it is this same message: a
        # fresh random id matches nothing, so only the broker's redelivered flag admits one.
        sighting = message_id or new_id()
        first = await self._first_sighting(verdict.sig, sighting, 2 * self.window)
        if first or redelivered:
            return verdict
        return protocol.refused_envelope(
            verdict,
            f"replayed envelope refused: {verdict.id} with this signature was already received",
            "$.sig",
            # Its caller is owed the answer of the first copy, not this refusal.
            answerable=False,
        )

    async def _first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        # A store that does not answer is not the message's fault: refusing would dead-letter
        # good messages, admitting unchecked would let replays through. Wait for it, as the
        # pipeline waits for the store's lease.
        pause = 0.1
        while True:
            try:
                return await self.store.first_sighting(key, message_id, ttl)
            except Exception as exc:
                log.warning(
                    "cannot check the replay window in %s (%s); trying again in %.1f s",
                    self.store.url,
                    exc,
                    pause,
                )
                await anyio.sleep(pause)
                pause = min(pause * 2, STORE_PAUSE_MAX)


def check_signing(keys: KeyRing | None, *, require: bool = False, who: str = "worker") -> None:
    """At a consumer's start: refuse without keys when `require`, else say it runs unsigned."""
    if keys is not None:
        return
    if require:
        raise SigningRequired(
            f"this {who} must verify signed envelopes (--require-signing) but no signing keys"
            f" are set: set {SIGNING_KEYS_ENV}=id:secret (the same value on every client and"
            " worker), or @/path/to/a/file holding it"
        )
    log.warning(
        "no signing keys (%s is not set): this %s runs unsigned envelopes, so anyone who can"
        " publish to its queues can run its agents and tools; set %s=id:secret on every client"
        " and worker, and start workers with --require-signing",
        SIGNING_KEYS_ENV,
        who,
        SIGNING_KEYS_ENV,
    )
