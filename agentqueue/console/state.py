"""What the web console shows, gathered from the broker, the workers' heartbeats and the spans.

- Partitions: ready messages and consumers from a passive queue declare (AMQP says no more,
  and the management plugin is not needed); un-acked messages, events in flight and the
  handling rate from the heartbeat of the worker that owns the partition.
- Workers: their heartbeats on `<ns>-control` (signed ones only, when the broker has keys).
- Dead letters: the same look as `agentqueue dlq list` (taken and given back), refreshed when
  the dead-letter queue's depth changes or after a button, not every poll.
- Sessions and batch runs: the notes workers and batch runs keep in the session store.
- Requests: `console.requests`, from the span files, when a request is looked at.

A broker that stops answering is shown as such (`broker_error`), and the console keeps trying.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import msgspec

from agentqueue import admin
from agentqueue.batch.progress import BatchProgress, batches_kind, read_progress
from agentqueue.broker.base import Broker
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.broker.urls import redact_url
from agentqueue.console.requests import RequestView, find_request
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import DeadLetter
from agentqueue.workers.membership import Heartbeat
from agentqueue.workers.middleware.turns import Turn, read_turns, turns_kind
from agentqueue.workers.session_store import SessionStore

log = logging.getLogger("agentqueue.console")

RATE_WINDOW = 10.0  # seconds of heartbeats the handling rate is computed over
SESSIONS_SHOWN = 20
BATCHES_SHOWN = 10
_heartbeat = msgspec.json.Decoder(Heartbeat)


@dataclass
class Partition:
    """One partition queue as the console shows it."""

    queue: str
    family: str
    ready: int
    consumers: int
    owner: str | None = None
    unacked: int | None = None
    in_flight: int = 0
    rate: float = 0.0  # events handled per second, over the last RATE_WINDOW seconds

    @property
    def stuck(self) -> bool:
        """Messages wait and nobody consumes them."""
        return self.ready > 0 and self.consumers == 0


@dataclass
class WorkerSeen:
    """A worker as its heartbeats describe it."""

    heartbeat: Heartbeat
    seen_at: float  # time.time() of the last heartbeat
    samples: deque[tuple[float, dict[str, int]]] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(frozen=True)
class SessionRow:
    """A recent session: its last turns (newest last), its state's size, its last worker."""

    session_id: str
    turns: list[Turn]
    state_bytes: int

    @property
    def owner(self) -> str:
        """The worker that ran the session's last turn."""
        return self.turns[-1].worker if self.turns else "-"


class ConsoleState:
    """Polls the broker, hears the workers, and answers the page's questions."""

    def __init__(
        self,
        broker: Broker,
        topology: Topology,
        store: SessionStore | None = None,
        span_files: Sequence[str] = (),
        *,
        interval: float = 1.0,
        expiry: float = 5.0,
    ) -> None:
        self.broker, self.topology, self.store = broker, topology, store
        self.span_files = list(span_files)
        self.interval, self.expiry = interval, expiry
        self.partitions: list[Partition] = []
        self.workers: dict[str, WorkerSeen] = {}
        self.dead: list[DeadLetter] = []
        self.sessions: list[SessionRow] = []
        self.batches: list[BatchProgress] = []
        self.store_error: str | None = None
        self.dead_count = 0
        self.broker_error: str | None = None
        self.updated_at = 0.0
        self._dead_depth: int | None = None
        self._dead_stale = True
        self._lock = asyncio.Lock()  # one look at the dead letters at a time

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll and listen until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            await self.poll()
            task_status.started()
            while True:
                await anyio.sleep(self.interval)
                await self.poll()

    async def poll(self) -> None:
        """One round: queue stats, the dead letters if their depth changed, the store's notes."""
        await self._poll_broker()
        if self.store is not None:
            try:
                with anyio.fail_after(max(2.0, self.interval * 3)):
                    await self._poll_store(self.store)
            except Exception as exc:
                self.store_error = f"cannot read the session store: {_reason(exc)}"
            else:
                self.store_error = None

    async def _poll_store(self, store: SessionStore) -> None:
        rows = []
        for note in await store.notes(turns_kind(self.topology.namespace), SESSIONS_SHOWN):
            summary = read_turns(note.value)
            if summary is not None:
                state = await store.load_state(summary.session_id)
                rows.append(SessionRow(summary.session_id, summary.turns, len(state or "")))
        self.sessions = rows
        batches = []
        for note in await store.notes(batches_kind(self.topology.namespace), BATCHES_SHOWN):
            progress = read_progress(note.value)
            if progress is not None:
                batches.append(progress)
        self.batches = batches

    async def _poll_broker(self) -> None:
        try:
            with anyio.fail_after(max(2.0, self.interval * 3)):
                rows = [await self._partition(q) for f in (REQUESTS, TOOLS) for q in self._of(f)]
                dead = await self.broker.stats(self.topology.dead_letter_queue)
                if self._dead_stale or dead.ready != self._dead_depth:
                    async with self._lock:
                        self.dead = await admin.dead_letters(self.broker, self.topology, 200)
                    self._dead_stale = False
                    self._dead_depth = dead.ready
        except Exception as exc:  # the broker is away: say so, keep the last view, try again
            reason = _reason(exc)
            if self.broker_error is None:
                log.warning("broker %s unreachable: %s", redact_url(self.broker.url), reason)
            self.broker_error = f"cannot reach the broker {redact_url(self.broker.url)}: {reason}"
            return
        if self.broker_error is not None:
            log.info("broker %s is back", redact_url(self.broker.url))
        self.broker_error = None
        self.partitions = rows
        self.dead_count = dead.ready
        self.updated_at = time.time()

    def _of(self, family: str) -> list[str]:
        return self.topology.queues(family)

    async def _partition(self, queue: str) -> Partition:
        stats = await self.broker.stats(queue)
        family, _ = self.topology.partition_of(queue) or ("other", 0)
        row = Partition(queue, family, stats.ready, stats.consumers)
        for seen in self.live().values():
            load = seen.heartbeat.load
            if queue in seen.heartbeat.owned:
                row.owner = seen.heartbeat.worker_id
                if load is not None:
                    row.unacked = load.unacked.get(queue, 0)
                    row.in_flight = load.in_flight.get(queue, 0)
            row.rate += _rate(seen.samples, queue)
        return row

    def live(self) -> dict[str, WorkerSeen]:
        """Workers heard within `expiry` seconds and not leaving."""
        now = time.time()
        return {
            w: seen
            for w, seen in self.workers.items()
            if now - seen.seen_at < self.expiry and not seen.heartbeat.leaving
        }

    async def _listen(self) -> None:
        while True:
            try:
                subscription = await self.broker.listen(f"{self.topology.namespace}-control")
                try:
                    async for delivery in subscription:
                        self.hear(delivery.body)
                finally:
                    with anyio.CancelScope(shield=True):
                        await subscription.close()
            except Exception as exc:  # the broker is away; poll() says so on the page
                log.debug("heartbeats not heard: %s", exc)
            await anyio.sleep(self.interval)

    def hear(self, body: bytes) -> None:
        """Take one heartbeat in (ignored when unsigned or forged while keys are set)."""
        if self.broker.signing is not None:
            try:
                self.broker.signing.verify(body)
            except ProtocolError:
                return
        try:
            heartbeat = _heartbeat.decode(body)
        except msgspec.MsgspecError:
            return
        now = time.time()
        seen = self.workers.get(heartbeat.worker_id)
        if seen is None:
            seen = self.workers[heartbeat.worker_id] = WorkerSeen(heartbeat, now)
        seen.heartbeat, seen.seen_at = heartbeat, now
        if heartbeat.load is not None:
            seen.samples.append((now, dict(heartbeat.load.handled)))
        for worker in [w for w, s in self.workers.items() if now - s.seen_at > 60]:
            del self.workers[worker]  # forgotten a minute after its last heartbeat

    def export_metrics(self) -> None:
        """Gauges of what the console sees (depths, consumers, dead letters, live workers)."""
        from opentelemetry import metrics

        meter = metrics.get_meter("agentqueue.console")

        def per_queue(field: str) -> Any:
            def observe(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
                for p in self.partitions:
                    yield metrics.Observation(
                        getattr(p, field), {"messaging.destination.name": p.queue}
                    )

            return observe

        meter.create_observable_gauge(
            "agentqueue.queue.ready", [per_queue("ready")], "{message}", "Messages waiting"
        )
        meter.create_observable_gauge(
            "agentqueue.queue.consumers", [per_queue("consumers")], "{consumer}", "Consumers"
        )
        meter.create_observable_gauge(
            "agentqueue.dead_letters.waiting",
            [lambda _: [metrics.Observation(self.dead_count)]],
            "{message}",
            "Dead letters waiting for a replay or a purge",
        )
        meter.create_observable_gauge(
            "agentqueue.workers.live",
            [lambda _: [metrics.Observation(len(self.live()))]],
            "{worker}",
            "Workers heard from within the expiry",
        )
        meter.create_observable_gauge(
            "agentqueue.broker.up",
            [lambda _: [metrics.Observation(int(self.broker_error is None))]],
            "1",
            "1 while the broker answers the console, 0 while it does not",
        )

    async def act_on_dead_letter(self, action: str, key: str) -> str:
        """Replay or purge one dead letter with the CLI's code; what it said, for the page."""
        out = io.StringIO()
        run = admin.dlq_replay if action == "replay" else admin.dlq_purge
        try:
            async with self._lock:
                count = await run(self.broker, self.topology, key, out)
        except Exception as exc:
            return f"{action} of {key} failed: {_reason(exc)}"
        if count:
            self._dead_stale = True
            await self.poll()
        return out.getvalue().strip() or f"no dead letter {key!r} (already replayed or purged?)"

    async def request(self, request_id: str) -> RequestView | None:
        """The request's spans and answer, or None when no span file names it."""
        return await find_request(request_id, self.span_files, self.store)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the poll deadline"
    text = str(exc)
    if text.startswith("<Connection") and text.endswith("closed"):
        return "the connection is closed (reconnecting)"  # aio-pika's repr says no more
    return text or type(exc).__name__


def _rate(samples: deque[tuple[float, dict[str, int]]], queue: str) -> float:
    if len(samples) < 2:
        return 0.0
    newest_at, newest = samples[-1]
    oldest_at, oldest = next(
        ((at, h) for at, h in samples if newest_at - at <= RATE_WINDOW), samples[-1]
    )
    if newest_at <= oldest_at:
        return 0.0
    return max(0, newest.get(queue, 0) - oldest.get(queue, 0)) / (newest_at - oldest_at)
