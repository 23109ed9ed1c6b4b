"""`agentqueue schema` and `config`: the v1 envelope's schema and the settings in force."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from agentqueue.cli.options import settings_options
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `schema` and `config`."""
    p = commands.add_parser("schema", help="print the JSON Schema of the v1 envelope")
    p.set_defaults(run=schema)
    p = commands.add_parser("config", help="print the settings in force (secrets masked)")
    settings_options(p)
    p.set_defaults(run=config)


def schema(args: argparse.Namespace, settings: Settings) -> int:
    """Print the envelope's JSON Schema."""
    from agentqueue.protocol.schema import envelope_schema

    print(json.dumps(envelope_schema(), indent=2))
    return 0


def config(args: argparse.Namespace, settings: Settings) -> int:
    """Print every setting, secrets masked."""
    shown = settings.masked()
    width = max(map(len, shown))
    for key, value in shown.items():
        print(f"{key:{width}}  {value}")
    return 0
