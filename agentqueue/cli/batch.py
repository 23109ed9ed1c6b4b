"""`agentqueue batch run` and `forget`: a JSONL file of requests, results to JSONL."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import settings_options, trace_option
from agentqueue.cli.running import load_app, on_broker, require_shared_broker, telemetry
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.batch.report import BatchSummary
    from agentqueue.broker.base import Broker
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `batch run` and `batch forget`."""
    p = commands.add_parser(
        "batch", help="run a JSONL file of requests, results to JSONL (resumable)"
    )
    actions = p.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    b = actions.add_parser("run", help="send every line of INPUT, write one result line per item")
    settings_options(b)
    trace_option(b)
    b.add_argument("input", metavar="INPUT.jsonl", help="one JSON request per line")
    b.add_argument(
        "-o", "--output", required=True, metavar="RESULTS.jsonl", help="results, one per line"
    )
    b.add_argument("--name", help="batch name (default: a hash of both paths); same name resumes")
    b.add_argument(
        "--max-in-flight",
        dest="max_in_flight",
        type=int,
        default=64,
        help="items sent and not yet answered at most",
    )
    b.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-send a failed or timed out item up to N times (default 1)",
    )
    b.add_argument(
        "--agent", help="agent for lines that do not name one (default: the app's default agent)"
    )
    b.add_argument(
        "--score",
        metavar="MODULE:FUNCTION",
        help="score(item, result) -> float; the summary shows the mean (default: none)",
    )
    b.add_argument(
        "--summary-json",
        dest="summary_json",
        metavar="FILE",
        help="also write the summary as JSON (default: none)",
    )
    b.add_argument(
        "--progress",
        choices=["auto", "bar", "lines"],
        default="auto",
        help="a bar on a terminal, lines otherwise (auto)",
    )
    b.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN/OUT",
        help="USD per million prompt/completion tokens, for the cost estimate"
        " (AGENTQUEUE_PRICES; default: none, so no cost is shown)",
    )
    b.add_argument(
        "--keep-queue",
        dest="keep_queue",
        action="store_true",
        help="keep the batch's reply queue when every item is done",
    )
    b.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="serve this App in this process for the batch (with no --broker: on an embedded"
        " broker, no other process needed); default: workers elsewhere answer",
    )
    b.set_defaults(run=run)
    f = actions.add_parser(
        "forget", help="delete an unfinished batch's reply queue (it will not be resumed)"
    )
    settings_options(f)
    f.add_argument("name", help="the batch name its summary printed (or --name gave)")
    f.set_defaults(run=forget)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run (or resume) the batch; 0 when every item has a final result, 130 on Ctrl-C."""
    from agentqueue.batch.report import load_score
    from agentqueue.batch.run import run_batch
    from agentqueue.batch.tokens import parse_prices, prices_from_env
    from agentqueue.workers.worker import Worker

    app = load_app(args.app) if args.app else None
    if app is None:
        require_shared_broker(settings, "batch run")
    elif settings.broker.startswith("memory:"):
        settings = dataclasses.replace(settings, broker=f"memory://batch-{os.getpid()}")
    score = load_score(args.score) if args.score else None
    prices = {**prices_from_env(), **parse_prices(",".join(args.price))}
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]

    async def go() -> BatchSummary:
        # The store is where the console reads the run's progress (and where an embedded
        # worker keeps its sessions).
        store = settings.open_store()
        try:
            async with settings.open_broker() as broker, contextlib.AsyncExitStack() as serving:
                if app is not None:
                    worker = Worker(app, broker, store, settings)
                    await serving.enter_async_context(worker.running())
                return await run_batch(
                    broker,
                    args.input,
                    args.output,
                    topology=settings.topology,
                    name=args.name,
                    max_in_flight=args.max_in_flight,
                    timeout=settings.timeout,
                    retries=args.retries,
                    agent=args.agent,
                    score=score,
                    progress=progress,
                    keep_queue=args.keep_queue,
                    prices=prices,
                    progress_store=store,
                )
        finally:
            await store.close()

    try:
        with telemetry(settings, "agentqueue-batch"):
            summary = anyio.run(go)
    except KeyboardInterrupt:
        print(
            f"interrupted: results so far are in {args.output}; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    summary.render(sys.stdout)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
    return 0 if summary.complete else 1


def forget(args: argparse.Namespace, settings: Settings) -> int:
    """Delete the batch's reply queue, so running it again starts afresh."""
    from agentqueue.batch.files import check_name

    require_shared_broker(settings, "batch forget")  # before the name is checked, as always
    queue = settings.topology.reply_queue(f"batch-{check_name(args.name)}")

    async def delete(broker: Broker) -> None:
        await broker.delete_queue(queue)

    on_broker(settings, "batch forget", delete)
    print(f"deleted {queue}; running the batch again starts it afresh")
    return 0
