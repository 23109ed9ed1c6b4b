"""`agentqueue demo`: three conversations through an embedded broker and two workers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import app_option, settings_options, trace_option
from agentqueue.cli.running import load_app, telemetry
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `demo`."""
    p = commands.add_parser(
        "demo", help="run 3 conversations through an embedded broker and two workers"
    )
    settings_options(p)
    trace_option(p)
    app_option(p)
    p.add_argument(
        "--cloud-local",
        dest="cloud_local",
        action="store_true",
        help="through a local MNS server and FC instances (the Alibaba Cloud path)",
    )
    p.add_argument(
        "--sandbox",
        action="store_true",
        help="the data-analyst example: Python in a per-session sandbox, two turns sharing it",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo the flags choose; 0 when no turn was lost."""
    from agentqueue.demo.embedded import run_demo, run_sandbox_demo

    app = load_app(args.app)
    if args.cloud_local:
        from agentqueue.demo.cloud_local import run_cloud_local_demo

        report = anyio.run(run_cloud_local_demo, args.app, settings)
    elif args.sandbox:
        report = anyio.run(run_sandbox_demo, settings)
    else:
        with telemetry(settings, "agentqueue-demo"):
            report = anyio.run(run_demo, app, settings)
    print(report.summary())
    return 0 if report.lost == 0 else 1
