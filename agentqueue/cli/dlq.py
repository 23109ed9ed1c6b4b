"""`agentqueue dlq`: list, show, replay or purge the namespace's dead letters."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agentqueue.cli.options import settings_options
from agentqueue.cli.running import on_broker, require_shared_broker
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.broker.base import Broker
    from agentqueue.cli.options import Commands
    from agentqueue.client import RequestHandle


def register(commands: Commands) -> None:
    """Add `dlq`."""
    p = commands.add_parser("dlq", help="list, show, replay or purge dead letters")
    settings_options(p)
    p.add_argument("action", choices=["list", "show", "replay", "purge"], help="what to do")
    p.add_argument(
        "id",
        nargs="?",
        help="envelope id or list index (show, replay, purge); replay without it replays all,"
        " purge needs `all` to purge all",
    )
    p.add_argument("--limit", type=int, default=100, help="most dead letters to list")
    p.add_argument(
        "--to-caller",
        action="store_true",
        help="replay: send answers to the original caller's reply queue (e.g. a batch still"
        " waiting) instead of waiting here and printing them",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Do the action; 1 when what it names is not there (or a replayed answer is not final)."""
    from agentqueue import admin
    from agentqueue.client import Client

    what = f"dlq {args.action}"
    require_shared_broker(settings, what)  # before the purge check: this refusal comes first
    if args.action == "purge" and args.id is None:
        raise ValueError(
            "dlq purge deletes dead letters for good: name an envelope id or list index, or"
            " `all` to purge every one"
        )
    topology = settings.topology

    async def act(broker: Broker) -> int:
        if args.action == "list":
            await admin.dlq_list(broker, topology, sys.stdout, args.limit)
            return 0
        if args.action == "show":
            if args.id is None:
                raise ValueError("dlq show needs an envelope id or a list index")
            found = await admin.dlq_show(broker, topology, args.id, sys.stdout)
            if not found:
                print(
                    f"no dead letter {args.id!r} in {topology.dead_letter_queue}", file=sys.stderr
                )
            return 0 if found else 1
        if args.action == "purge":
            key = None if args.id == "all" else args.id
            count = await admin.dlq_purge(broker, topology, key, sys.stdout)
            print(f"{count} purged")
            return 0 if count or key is None else 1
        if args.to_caller:
            sent = await admin.dlq_replay(broker, topology, args.id, sys.stdout)
            print(f"{len(sent)} replayed; answers go to their original callers")
            return 0
        async with Client(broker, settings=settings) as caller:
            sent = await admin.dlq_replay(broker, topology, args.id, sys.stdout, caller=caller)
            print(f"{len(sent)} replayed; waiting for their answers")
            return await _print_answers([r.handle for r in sent if r.handle])

    return on_broker(settings, what, act, existing=True)


async def _print_answers(handles: list[RequestHandle]) -> int:
    """Wait for each request's terminal event and print it; 0 when every one is `final`."""
    finals = 0
    for handle in handles:
        event = await handle.result()
        text = event.text if event.kind == "final" else event.error
        print(f"{handle.id}: {event.kind}: {text}")
        finals += event.kind == "final"
    return 0 if finals == len(handles) else 1
