"""Which workers are alive, and which of them should own each partition.

Single-active-consumer queues give fail-over but not balance: the first worker to subscribe
would own every partition. So workers announce themselves with heartbeats on a broadcast
topic, each computes the same assignment from the same live set, and a worker subscribes only
to the partitions assigned to it. A partition changing hands is safe at every step: the old
owner finishes what it started before it unsubscribes, the new owner's consumer stays
standby until then, and the session lease guards the state throughout.

When the broker has signing keys, heartbeats are signed like envelopes, and a heartbeat that is
unsigned, forged, older than `max_age` or not newer than the last one from its worker is ignored
and counted: a party on the broker without the keys can neither invent workers (to take
partitions away from the real ones) nor keep a dead one alive by replaying its heartbeats.
Peers silent for longer than `prune_after` are forgotten.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from hashlib import blake2b

import anyio
import anyio.abc
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError
from agentqueue.protocol.errors import ProtocolError

log = logging.getLogger("agentqueue.membership")

MAX_AGE = 30.0  # seconds a signed heartbeat stays acceptable: room for clock skew between hosts
WARN_EVERY = 100  # after the first ignored heartbeat of a kind, warn again every this many


class WorkerLoad(msgspec.Struct, omit_defaults=True):
    """What a worker is doing, for operators (the console); the assignment never reads it."""

    role: str = ""
    version: str = ""
    in_flight: dict[str, int] = {}  # queue -> events running now
    unacked: dict[str, int] = {}  # queue -> events received and not settled (running or queued)
    handled: dict[str, int] = {}  # queue -> events handled since the worker started
    sessions: int = 0  # sessions it handled a turn of, on the partitions it owns now


class Heartbeat(msgspec.Struct, omit_defaults=True):
    """What a worker tells its peers every interval."""

    worker_id: str
    eligible: dict[str, list[str]]  # family -> queues this worker may serve
    owned: list[str] = []  # queues it is subscribed to right now
    leaving: bool = False
    at: float = 0.0
    load: WorkerLoad | None = None  # added in 0.1: older workers send none


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Heartbeat)


def package_version() -> str:
    """The installed agentqueue version, or `unknown` in a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentqueue")
    except PackageNotFoundError:
        return "unknown"


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
        max_age: float = MAX_AGE,
        prune_after: float | None = None,
        load: Callable[[], WorkerLoad] | None = None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.worker_id = worker_id
        self.eligible = eligible
        self.interval = interval
        self.expiry = expiry
        self.max_age = max_age
        # A peer is kept past its expiry for as long as a replay of its last heartbeat could
        # still pass the age check, so the replay is recognised as not newer and ignored.
        self.prune_after = max(expiry, max_age) if prune_after is None else prune_after
        self.owned: set[str] = set()
        self.peers: dict[str, Heartbeat] = {}
        self._seen_at: dict[str, float] = {}
        self.ignored: Counter[str] = Counter()  # reason -> heartbeats ignored for it
        self.changed = anyio.Event()
        self.load = load

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
        load = self.load() if self.load is not None else None
        return Heartbeat(
            self.worker_id, self.eligible, sorted(self.owned), leaving, time.time(), load
        )

    async def announce(self, leaving: bool = False) -> None:
        """Broadcast one heartbeat now (signed when the broker has keys)."""
        body = _encoder.encode(self._heartbeat(leaving))
        if self.broker.signing is not None:
            body = self.broker.signing.sign(body)
        await self.broker.broadcast(self.topic, body)

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
        signing = self.broker.signing
        if signing is not None:
            try:
                signing.verify(body)
            except ProtocolError as exc:
                kind = "forged" if b'"sig":' in body else "unsigned"
                self._ignore(kind, str(exc))
                return
        try:
            heartbeat = _decoder.decode(body)
        except msgspec.MsgspecError as exc:
            self._ignore("malformed", str(exc))
            return
        if heartbeat.worker_id == self.worker_id:
            return
        before = self.peers.get(heartbeat.worker_id)
        if signing is not None:
            age = time.time() - heartbeat.at
            if age > self.max_age:
                self._ignore(
                    "stale",
                    f"{heartbeat.worker_id!r} sent it {age:.0f} s ago (over {self.max_age:g} s)",
                )
                return
            if before is not None and heartbeat.at <= before.at:
                self._ignore(
                    "replayed", f"not newer than the last one from {heartbeat.worker_id!r}"
                )
                return
        self.peers[heartbeat.worker_id] = heartbeat
        self._seen_at[heartbeat.worker_id] = time.monotonic()
        if (
            before is None
            or before.leaving != heartbeat.leaving
            or before.eligible != heartbeat.eligible
        ):
            self._notify()

    def _ignore(self, kind: str, reason: str) -> None:
        self.ignored[kind] += 1
        count = self.ignored[kind]
        if count == 1 or count % WARN_EVERY == 0:
            log.warning(
                "ignored a heartbeat on %s (%s, %d so far): %s", self.topic, kind, count, reason
            )

    def prune(self, now: float | None = None) -> list[str]:
        """Forget peers silent for over `prune_after` seconds (monotonic clock); returns them."""
        now = time.monotonic() if now is None else now
        gone = [w for w, seen in self._seen_at.items() if now - seen > self.prune_after]
        for worker in gone:
            del self._seen_at[worker]
            self.peers.pop(worker, None)
        return gone

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
            self.prune()
            now = set(self.live())
            if now != alive:
                log.info("live workers changed: %s", ", ".join(sorted(now)))
                alive = now
                self._notify()
