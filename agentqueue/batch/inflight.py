"""`BatchRun`: one batch's items in flight: sent (a conversation's in input order), retried,
and each reply settled into exactly one result line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec

from agentqueue.batch.files import BatchItem, ResultLine, ResultsFile
from agentqueue.batch.report import BatchCounts
from agentqueue.broker.errors import BrokerError
from agentqueue.client import ANSWER_GRACE, Client
from agentqueue.protocol.codec import encode
from agentqueue.protocol.messages import Envelope, ResultEvent
from agentqueue.workers import spans

log = logging.getLogger("agentqueue.batch")

RETRYABLE = frozenset({"failed", "timed_out"})
BACKLOG_WAIT = 10.0  # seconds a resumed run waits for replies that arrived while it was away


@dataclass(slots=True)
class _Pending:
    item: BatchItem
    session_id: str
    failed_attempt: int = 0  # highest attempt known to have failed or timed out
    first_sent: float | None = None
    wakeup: anyio.Event | None = None
    done: bool = False


class BatchRun:
    """Sends the pending items of one batch and writes each result once."""

    def __init__(
        self,
        client: Client,
        name: str,
        items: list[BatchItem],
        results: ResultsFile,
        written: dict[str, ResultLine],
        *,
        max_in_flight: int = 64,
        timeout: float = 300.0,
        retries: int = 1,
        agent: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.client = client
        self.name = name
        self.results = results
        self.written = written
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.max_attempts = retries + 1
        self.agent = agent
        self.on_change = on_change or (lambda: None)
        self.counts = BatchCounts(total=len(items), done=len(written))
        self.counts.failed = sum(1 for r in written.values() if r.status != "final")
        self.replies_seen = 0
        self._pending: dict[str, _Pending] = {}
        self._requests: dict[str, tuple[_Pending, int]] = {}
        self._chains: dict[str, list[_Pending]] = {}
        for item in items:
            if item.id in written:
                continue
            session = item.session_id or f"{name}:{item.id}"
            pending = self._pending[item.id] = _Pending(item, session)
            self._chains.setdefault(session, []).append(pending)
            for attempt in range(1, self.max_attempts + 1):
                self._requests[self.request_id(item.id, attempt)] = (pending, attempt)

    def request_id(self, item_id: str, attempt: int) -> str:
        """The deterministic request (and envelope) id of one attempt at one item."""
        return f"{self.name}:{item_id}" if attempt == 1 else f"{self.name}~{attempt}:{item_id}"

    async def on_reply(self, envelope: Envelope) -> None:
        """Settle an item from a reply; returns after its line is on disk, so the ack is safe."""
        self.replies_seen += 1
        ref = self._requests.get(envelope.correlation_id or "")
        body = envelope.body
        if ref is None or not isinstance(body, ResultEvent) or not body.terminal:
            return  # stream deltas, duplicates and replies to items already written
        pending, attempt = ref
        self._settle(pending, attempt, body)

    def _settle(self, pending: _Pending, attempt: int, event: ResultEvent) -> None:
        if pending.done:
            return
        if event.kind in RETRYABLE and attempt < self.max_attempts:
            if attempt > pending.failed_attempt:
                log.info(
                    "item %s attempt %d: %s (%s); sending it again",
                    pending.item.id,
                    attempt,
                    event.kind,
                    event.error,
                )
                pending.failed_attempt = attempt
                self._wake(pending)
            return
        sent = pending.first_sent
        latency = None if sent is None else (time.monotonic() - sent) * 1000
        line = ResultLine(
            id=pending.item.id,
            session_id=pending.session_id,
            status=event.kind,
            text=event.text,
            error=event.error,
            latency_ms=None if latency is None else round(latency, 1),
            attempts=attempt,
            usage=event.usage,
        )
        self.results.append(line)
        pending.done = True
        self.written[line.id] = line
        self.counts.done += 1
        self.counts.written_now += 1
        if line.status != "final":
            self.counts.failed += 1
        self._wake(pending)
        self.on_change()

    @staticmethod
    def _wake(pending: _Pending) -> None:
        if pending.wakeup is not None:
            pending.wakeup.set()

    async def run(self) -> None:
        """Wait for replies left from an earlier run, then send every pending item."""
        await self._await_backlog()
        slots = anyio.Semaphore(self.max_in_flight)
        async with anyio.create_task_group() as tg:
            for chain in self._chains.values():
                if all(p.done for p in chain):
                    continue
                await slots.acquire()
                tg.start_soon(self._run_chain, chain, slots)

    async def _await_backlog(self) -> None:
        # Replies that came in while no client listened are waiting on the durable queue;
        # writing them first saves sending those items again.
        if not self._pending:
            return
        deadline = time.monotonic() + BACKLOG_WAIT
        seen = -1
        while time.monotonic() < deadline:
            try:
                stats = await self.client.broker.stats(self.client.reply_queue)
            except (NotImplementedError, BrokerError):
                return
            if stats.ready == 0 and seen == self.replies_seen:
                return
            seen = self.replies_seen
            await anyio.sleep(0.05)

    async def _run_chain(self, chain: list[_Pending], slots: anyio.Semaphore) -> None:
        try:
            for pending in chain:
                await self._run_item(pending)
        finally:
            slots.release()

    async def _run_item(self, pending: _Pending) -> None:
        while not pending.done:
            attempt = pending.failed_attempt + 1
            await self._publish(pending, attempt)
            self.counts.in_flight += 1
            self.on_change()
            try:
                with anyio.move_on_after(self.timeout + ANSWER_GRACE):
                    while not pending.done and pending.failed_attempt < attempt:
                        pending.wakeup = anyio.Event()
                        await pending.wakeup.wait()
            finally:
                pending.wakeup = None
                self.counts.in_flight -= 1
            if not pending.done and pending.failed_attempt < attempt:
                error = f"no answer within {self.timeout + ANSWER_GRACE:.0f} s"
                rid = self.request_id(pending.item.id, attempt)
                timed_out = ResultEvent(request_id=rid, kind="timed_out", error=error)
                self._settle(pending, attempt, timed_out)

    async def _publish(self, pending: _Pending, attempt: int) -> None:
        item = pending.item
        rid = self.request_id(item.id, attempt)
        request = msgspec.structs.replace(
            item.request,
            id=rid,
            session_id=pending.session_id,
            agent=item.request.agent or self.agent,
        )
        now = time.time()
        envelope = Envelope(
            id=rid,
            session_id=pending.session_id,
            correlation_id=rid,
            reply_to=self.client.reply_queue,
            body=request,
            attempt=attempt,
            created_at=now,
            deadline=now + self.timeout,
        )
        if pending.first_sent is None:
            pending.first_sent = time.monotonic()
        queue = self.client.topology.route(envelope)
        with spans.publishing(self.client.broker, queue, envelope):
            await self.client.broker.publish(queue, encode(envelope))
