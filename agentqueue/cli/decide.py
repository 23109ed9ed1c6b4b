"""`agentqueue cancel`, `approve` and `deny`: tell a running or paused request what to do."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from agentqueue.cli.options import settings_options
from agentqueue.cli.running import with_client
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands
    from agentqueue.client import Client


def register(commands: Commands) -> None:
    """Add `cancel`, `approve` and `deny`."""
    p = commands.add_parser("cancel", help="cancel a running request")
    settings_options(p)
    p.add_argument("request_id", help="id of the request to cancel (`call` prints it)")
    p.add_argument("--session", required=True, help="session id of that request")
    p.set_defaults(run=cancel)
    for decision, does in (("approve", "run it and resume"), ("deny", "resume without it")):
        p = commands.add_parser(decision, help=f"{decision} a paused request's tool call: {does}")
        settings_options(p)
        p.add_argument("request_id", help="id of the paused request (`call` prints it)")
        p.add_argument("--session", required=True, help="session id of that request")
        p.add_argument("--call", dest="call_id", help="tool call id (default: the one waiting)")
        if decision == "deny":
            p.add_argument("--reason", help="why, for the agent to explain (default: none given)")
        p.set_defaults(run=decide)


def cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Send the cancel; the worker running the request stops it."""

    async def send(client: Client) -> None:
        await client.cancel(args.request_id, session_id=args.session)

    with_client(settings, "cancel", send)
    print(f"cancel sent for {args.request_id}")
    return 0


def decide(args: argparse.Namespace, settings: Settings) -> int:
    """Send a decision and print the resumed turn's answer (stderr: its kind when not final)."""
    from agentqueue.errors import RequestError

    what = args.command
    approved = what == "approve"

    async def send(client: Client) -> int:
        try:
            if approved:
                result = await client.approve(
                    args.request_id, args.call_id, session_id=args.session
                )
            else:
                result = await client.deny(
                    args.request_id, args.call_id, session_id=args.session, reason=args.reason
                )
        except RequestError as exc:
            print(f"agentqueue {what}: {exc}", file=sys.stderr)
            return 1
        if result.kind != "final":
            print(f"{result.kind}: {result.error or ''}".rstrip(), file=sys.stderr)
        print(result.text)
        return 0 if result.kind in ("final", "approval_required") else 1

    return with_client(settings, what, send)
