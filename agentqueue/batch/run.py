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
import os
import time

import anyio

from agentqueue.batch.files import (
    BatchItem,
    ResultLine,
    ResultsFile,
    batch_name,
    check_name,
    read_items,
)
from agentqueue.batch.inflight import BatchRun
from agentqueue.batch.progress import ProgressNotes
from agentqueue.batch.report import BatchSummary, Progress, Score, summarize
from agentqueue.batch.tokens import Prices, prices_from_env
from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.client import Client
from agentqueue.errors import BatchInputError
from agentqueue.settings import Settings
from agentqueue.workers.session_store import SessionStore


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
