"""`agentqueue status`: queue depths per partition and which worker is active on each."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agentqueue.cli.options import settings_options
from agentqueue.cli.running import on_broker
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.broker.base import Broker
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `status`."""
    p = commands.add_parser(
        "status", help="queue depths per partition and which worker is active on each"
    )
    settings_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the table; 1 when the namespace has no queues (none are declared by looking)."""
    from agentqueue.admin import print_status

    async def show(broker: Broker) -> int:
        await print_status(broker, settings.topology, sys.stdout)
        return 0

    return on_broker(settings, "status", show, existing=True)
