"""`agentqueue worker`: serve an app's agents and tools from a broker."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import DEFAULT_APP, metrics_options, settings_options, trace_option
from agentqueue.cli.running import load_app, require_shared_broker, telemetry
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `worker`."""
    p = commands.add_parser("worker", help="serve an app's agents and tools from a broker")
    settings_options(p)
    trace_option(p)
    p.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="module:attribute of the App (default examples.weather:app)",
    )
    p.add_argument(
        "--role",
        choices=["agents", "tools", "all"],
        default="all",
        help="serve agent requests, tool calls, or both",
    )
    p.add_argument(
        "--partitions",
        dest="serve",
        default="all",
        help="which partitions to serve, e.g. 0-7,12 (default all)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help=f"events run at once (AGENTQUEUE_CONCURRENCY, default {Settings().concurrency})",
    )
    p.add_argument(
        "--no-balance",
        dest="balance",
        action="store_const",
        const=False,
        default=None,
        help="serve every given partition instead of sharing them with the other live workers"
        " (AGENTQUEUE_BALANCE=false)",
    )
    p.add_argument(
        "--require-signing",
        dest="require_signing",
        action="store_true",
        help="refuse to start without signing keys (AGENTQUEUE_SIGNING_KEYS)",
    )
    metrics_options(p, "this worker")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until stopped; 2 when --require-signing finds no keys."""
    from agentqueue.protocol.partitioning import parse_partitions
    from agentqueue.serve import serve_worker
    from agentqueue.workers import models

    require_shared_broker(settings, "worker")
    if args.require_signing:
        from agentqueue.workers.admission import check_signing
        from agentqueue.workers.errors import SigningRequired

        try:
            check_signing(settings.key_ring(), require=True)
        except SigningRequired as exc:
            print(f"agentqueue worker: {exc}", file=sys.stderr)
            return 2
    if args.verbose == 0:
        logging.getLogger("agentqueue").setLevel(logging.INFO)
    # Rate limits and usage live beside the sessions; a model that cannot be used stops the
    # start here, with one line (ModelConfigError), before anything connects.
    models.configure(store_url=settings.store, namespace=settings.namespace)
    if args.role != "tools":
        models.describe_model(settings.namespace)
    app = load_app(args.app)
    partitions = parse_partitions(args.serve, settings.partitions)
    tool_partitions = parse_partitions(args.serve, settings.tool_partitions)
    metrics_at = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None
    with telemetry(settings, "agentqueue-worker", metrics_at):
        anyio.run(
            lambda: serve_worker(
                app,
                settings,
                role=args.role,
                partitions=partitions,
                tool_partitions=tool_partitions,
            )
        )
    return 0
