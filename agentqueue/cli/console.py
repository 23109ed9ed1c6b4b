"""`agentqueue console`: a web page of partitions, workers, requests, traces, dead letters."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import settings_options
from agentqueue.cli.running import require_shared_broker, telemetry
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `console`."""
    p = commands.add_parser(
        "console", help="a web page: partitions, workers, requests, traces, dead letters"
    )
    settings_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8090, help="port to listen on")
    p.add_argument(
        "--token",
        help="bearer token the page requires (AGENTQUEUE_CONSOLE_TOKEN; @path reads a file);"
        " needed off loopback (default: none on 127.0.0.1)",
    )
    p.add_argument(
        "--spans",
        action="append",
        default=[],
        metavar="FILE",
        help="a --trace-file of a worker or client, for request waterfalls; repeat for more"
        " (default: none)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between looks at the broker"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the console until stopped."""
    from agentqueue.console.app import read_token, serve_console

    require_shared_broker(settings, "console")
    token = read_token(args.token or settings.console_token)
    with telemetry(settings, "agentqueue-console", metrics_at=None, prometheus=True):
        anyio.run(
            lambda: serve_console(
                settings,
                host=args.host,
                port=args.port,
                token=token,
                span_files=args.spans,
                interval=args.interval,
            )
        )
    return 0
