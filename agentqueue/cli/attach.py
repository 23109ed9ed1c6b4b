"""`agentqueue attach`: follow a request's kept stream, read from the workers' store."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import settings_options
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `attach`."""
    p = commands.add_parser(
        "attach", help="follow a running or recently finished request's stream from here"
    )
    settings_options(p)
    p.add_argument("request_id", help="id of the request (`call` prints it)")
    p.add_argument(
        "--after", type=int, default=0, help="the last seq already seen (default 0: from the start)"
    )
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the stream from `--after` on; 0 when it ends `final`."""
    import msgspec

    from agentqueue.client import Client

    if settings.store.startswith("memory:"):
        raise ValueError(
            "attach reads the store the workers keep streams in: pass --store redis://… or"
            " sqlite:///… (or set AGENTQUEUE_STORE); memory:// exists only inside one process"
        )

    async def go() -> int:
        # Only the store is read (the workers' store, where streams are kept): no broker.
        client = Client("memory://", settings=settings, default_timeout=settings.timeout)
        async with client:
            async for event in client.attach(args.request_id, after=args.after):
                if args.json:
                    print(msgspec.json.encode(event).decode(), flush=True)
                elif event.restart:
                    print(f"\n[attempt {event.attempt} starts over]", file=sys.stderr, flush=True)
                elif event.kind == "delta":
                    print(event.text, end="", flush=True)
                if event.terminal:
                    if not args.json:
                        print()
                    if event.kind != "final":
                        print(f"{event.kind}: {event.error}", file=sys.stderr)
                        return 1
                    return 0
        return 1

    return anyio.run(go)
