"""`agentqueue trace show`: a trace from --trace-file spans as a waterfall."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `trace show`."""
    p = commands.add_parser("trace", help="look at spans written with --trace-file")
    actions = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    t = actions.add_parser(
        "show", help="a trace as a waterfall: service, span, start, duration, status"
    )
    t.add_argument(
        "files", nargs="+", metavar="FILE", help="trace files (one per process merge into one view)"
    )
    t.add_argument(
        "--trace-id", help="the trace to show, or a unique prefix of it (default: the latest)"
    )
    t.add_argument("--width", type=int, default=100, help="columns to fit in (default 100)")
    t.set_defaults(run=show)


def show(args: argparse.Namespace, settings: Settings) -> int:
    """Print the waterfall of one trace."""
    from agentqueue.telemetry.trace_file import read_spans
    from agentqueue.telemetry.trace_view import render_waterfall

    for line in render_waterfall(read_spans(args.files), args.trace_id, width=args.width):
        print(line)
    return 0
