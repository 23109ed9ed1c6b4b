"""Which workers are alive, and which of them should own each partition.

Single-active-consumer queues give fail-over but not balance: the first worker to subscribe
would own every partition. So workers announce themselves with heartbeats on a broadcast
topic, each computes the same assignment from the same live set, and a worker subscribes only
to the partitions assigned to it. A partition changing hands is safe at every step: the old
owner finishes what it started before it unsubscribes, the new owner's consumer stays
standby until then, and the session lease guards the state throughout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from hashlib import blake2b

import anyio
import anyio.abc
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError

log = logging.getLogger("agentqueue.membership")


class Heartbeat(msgspec.Struct, omit_defaults=True):
    """What a worker tells its peers every interval."""

    worker_id: str
    eligible: dict[str, list[str]]  # family -> queues this worker may serve
    owned: list[str] = []  # queues it is subscribed to right now
    leaving: bool = False
    at: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Heartbeat)


def _score(queue: str, worker: str) -> int:
    return int.from_bytes(blake2b(f"{queue}|{worker}".encode(), digest_size=8).digest(), "big")


def assign(queues: Iterable[str], eligible: dict[str, set[str]]) -> dict[str, str]:
    """Queue -> worker: highest rendezvous score first, no worker over ceil(N/W) queues.

    Deterministic, so every worker computes the same answer from the same heartbeats, and a
    worker joining or leaving moves few queues.
    """
    queues = sorted(queues)
    workers = sorted(w for w, allowed in eligible.items() if allowed)
    if not workers:
        return {}
    cap = math.ceil(len(queues) / len(workers))
    load = dict.fromkeys(workers, 0)
    owner: dict[str, str] = {}
    for queue in queues:
        candidates = sorted(
            (w for w in workers if queue in eligible[w]),
            key=lambda w: _score(queue, w),
            reverse=True,
        )
        if not candidates:
            continue
        chosen = next((w for w in candidates if load[w] < cap), candidates[0])
        owner[queue] = chosen
        load[chosen] += 1
    return owner


class Membership:
    """Heartbeats out, heartbeats in, and the live set they imply."""

    def __init__(
        self,
        broker: Broker,
        topic: str,
        worker_id: str,
        eligible: dict[str, list[str]],
        *,
        interval: float = 1.0,
        expiry: float = 3.5,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.worker_id = worker_id
        self.eligible = eligible
        self.interval = interval
        self.expiry = expiry
        self.owned: set[str] = set()
        self.peers: dict[str, Heartbeat] = {}
        self._seen_at: dict[str, float] = {}
        self.changed = anyio.Event()

    def live(self) -> dict[str, Heartbeat]:
        """Workers heard from within `expiry` seconds and not leaving, this one included."""
        now = time.monotonic()
        alive = {
            w: hb
            for w, hb in self.peers.items()
            if now - self._seen_at[w] < self.expiry and not hb.leaving
        }
        alive[self.worker_id] = self._heartbeat()
        return alive

    def assignment(self) -> dict[str, str]:
        """Queue -> owning worker, over every family, as this worker sees the live set."""
        alive = self.live()
        owners: dict[str, str] = {}
        families = {f for hb in alive.values() for f in hb.eligible}
        for family in families:
            eligible = {w: set(hb.eligible.get(family, ())) for w, hb in alive.items()}
            queues = set().union(*eligible.values())
            owners.update(assign(queues, eligible))
        return owners

    def mine(self) -> set[str]:
        """The queues this worker should be subscribed to now."""
        return {q for q, w in self.assignment().items() if w == self.worker_id}

    def _heartbeat(self, leaving: bool = False) -> Heartbeat:
        return Heartbeat(self.worker_id, self.eligible, sorted(self.owned), leaving, time.time())

    async def announce(self, leaving: bool = False) -> None:
        """Broadcast one heartbeat now."""
        await self.broker.broadcast(self.topic, _encoder.encode(self._heartbeat(leaving)))

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and heartbeat until cancelled; announces leaving on the way out."""
        subscription = await self.broker.listen(self.topic)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._beat)
                tg.start_soon(self._expire)
                task_status.started()
                async for delivery in subscription:
                    self._hear(delivery.body)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.announce(leaving=True)
                except Exception as exc:  # the broker may already be gone; peers expire us then
                    log.debug("could not announce leaving: %s", exc)
                await subscription.close()

    def _hear(self, body: bytes) -> None:
        try:
            heartbeat = _decoder.decode(body)
        except msgspec.MsgspecError:
            log.warning("ignoring a malformed heartbeat on %s", self.topic)
            return
        if heartbeat.worker_id == self.worker_id:
            return
        before = self.peers.get(heartbeat.worker_id)
        self.peers[heartbeat.worker_id] = heartbeat
        self._seen_at[heartbeat.worker_id] = time.monotonic()
        if (
            before is None
            or before.leaving != heartbeat.leaving
            or before.eligible != heartbeat.eligible
        ):
            self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def _beat(self) -> None:
        while True:
            try:
                await self.announce()
            except BrokerError as exc:
                # The broker is away (restarting, connection lost): the worker carries on and
                # beats again once the connection is back; peers may expire it meanwhile.
                log.warning("heartbeat not sent: %s", exc)
            await anyio.sleep(self.interval)

    async def _expire(self) -> None:
        alive = set(self.live())
        while True:
            await anyio.sleep(self.interval / 2)
            now = set(self.live())
            if now != alive:
                log.info("live workers changed: %s", ", ".join(sorted(now)))
                alive = now
                self._notify()
