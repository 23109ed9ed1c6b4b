"""Batch runs: one request per input line, one result line per item, resumable after a crash.

    agentqueue batch run evals.jsonl -o results.jsonl --max-in-flight 64 --retries 1

    summary = await run_batch("amqp://guest:guest@127.0.0.1/", "evals.jsonl", "results.jsonl")

Replies come back on a durable reply queue named after the batch, so a run that stops for any
reason (Ctrl-C, a crash, SIGKILL) and is started again with the same command carries on: items
with a line in the results file are not sent again, replies that arrived while no client was
listening are written, and no item is ever written twice. Request ids are deterministic per item
and attempt (`<batch>:<item id>`, retries `<batch>~<n>:<item id>`), so an item sent again is
answered from the worker's stored result instead of being run twice. A reply is acked only after
its line is fsynced, so nothing reported done is lost.

Items that share a `session_id` are a conversation: they run one after another in input order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import msgspec

from agentqueue.batch_files import (
    BatchItem,
    ResultLine,
    ResultsFile,
    batch_name,
    check_name,
    read_items,
)
from agentqueue.batch_progress import ProgressNotes
from agentqueue.batch_report import BatchCounts, BatchSummary, Progress, Score, summarize
from agentqueue.batch_tokens import Prices, prices_from_env
from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerError
from agentqueue.broker.topology import Topology
from agentqueue.client import ANSWER_GRACE, Client
from agentqueue.errors import BatchInputError
from agentqueue.protocol.codec import encode
from agentqueue.protocol.messages import Envelope, ResultEvent
from agentqueue.settings import Settings
from agentqueue.workers import spans
from agentqueue.workers.session_store import SessionStore

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


async def run_batch(
    broker: str | Broker,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    topology: Topology | None = None,
    name: str | None = None,
    max_in_flight: int = 64,
    timeout: float = 300.0,
    retries: int = 1,
    agent: str | None = None,
    score: Score | None = None,
    progress: bool | None = None,
    keep_queue: bool = False,
    prices: Prices | None = None,
    progress_store: SessionStore | None = None,
) -> BatchSummary:
    """Run (or resume) a batch: every input line to a result line in `output_path`.

    `progress` True draws a bar, False prints plain lines, None picks by whether stderr is a
    terminal. The durable reply queue is deleted once every item has a result (unless
    `keep_queue`); stopping earlier keeps it, so the same call resumes. `prices` (default
    `AGENTQUEUE_PRICES`) gives the summary an estimated cost. `progress_store`: where the run
    keeps a note of its progress (the workers' session store, read by the console).
    """
    prices = prices_from_env() if prices is None else prices
    topology = topology or Topology()
    name = check_name(name) if name is not None else batch_name(input_path, output_path)
    items = read_items(input_path)
    notes = (
        None if progress_store is None else ProgressNotes(progress_store, topology.namespace, name)
    )
    known = {item.id for item in items}
    results = ResultsFile(output_path)
    started = time.monotonic()
    results.open()
    try:
        written = results.load()
        strangers = [item_id for item_id in written if item_id not in known]
        if strangers:
            raise BatchInputError(
                f"{output_path} has results for {len(strangers)} ids that are not in {input_path}"
                f" (e.g. {strangers[0]!r}); is it the output of another batch? choose another -o"
            )
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(broker, str):
                broker = await stack.enter_async_context(Settings.load().open_broker(broker))
            run = await _run(
                broker,
                topology,
                name,
                items,
                results,
                written,
                max_in_flight=max_in_flight,
                timeout=timeout,
                retries=retries,
                agent=agent,
                progress=progress,
                notes=notes,
            )
            if len(written) == len(items) and not keep_queue:
                # Done: nothing will resume this batch, so its reply queue can go.
                await broker.delete_queue(topology.reply_queue(f"batch-{name}"))
    finally:
        results.close()
    summary = summarize(
        name,
        str(output_path),
        items,
        written,
        written_now=run.counts.written_now,
        elapsed_s=time.monotonic() - started,
        score=score,
        prices=prices,
    )
    if notes is not None:
        await notes.write(run.counts, finished=summary.complete, score=summary.score_mean)
    return summary


async def _run(
    broker: Broker,
    topology: Topology,
    name: str,
    items: list[BatchItem],
    results: ResultsFile,
    written: dict[str, ResultLine],
    *,
    max_in_flight: int,
    timeout: float,
    retries: int,
    agent: str | None,
    progress: bool | None,
    notes: ProgressNotes | None = None,
) -> BatchRun:
    client = Client(
        broker,
        topology=topology,
        client_id=f"batch-{name}",
        reply_queue=topology.reply_queue(f"batch-{name}"),
        durable_replies=True,
        default_timeout=timeout,
    )
    run = BatchRun(
        client,
        name,
        items,
        results,
        written,
        max_in_flight=max_in_flight,
        timeout=timeout,
        retries=retries,
        agent=agent,
    )
    client.router.on_unmatched = run.on_reply  # no inboxes: every reply is settled by the run
    with Progress(name, run.counts, live=progress) as bar:
        run.on_change = bar.update
        async with client, anyio.create_task_group() as tg:
            if notes is not None:
                tg.start_soon(notes.run, run.counts)
            await run.run()
            tg.cancel_scope.cancel()
    return run
