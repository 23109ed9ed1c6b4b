"""`agentqueue schedule add|list|remove`: the schedules of a namespace, in its session store."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

import anyio

from agentqueue.cli.options import settings_options
from agentqueue.settings import Settings
from agentqueue.workers.schedules import Schedule, Schedules

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `schedule add`, `list` and `remove`."""
    p = commands.add_parser("schedule", help="add, list or remove recurring requests")
    actions = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    s = actions.add_parser("add", help="send PROMPT to a session at every tick")
    settings_options(s)
    s.add_argument("name", help="the schedule's name (letters, digits, '-', '_', '.')")
    s.add_argument("prompt", help="the request text sent at each tick")
    s.add_argument("--session", required=True, help="session the requests run in")
    s.add_argument("--agent", help="agent to ask (default: the app's default agent)")
    when = s.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--cron",
        help="UTC cron: 5 fields, or 6 with seconds first ('0 9 * * *', '*/2 * * * * *');"
        " this or --every (default: none)",
    )
    when.add_argument("--every", help="a fixed period: 5s, 2m, 1h, 1d (default: none)")
    s.add_argument("--replace", action="store_true", help="replace a schedule of that name")
    s = actions.add_parser("list", help="every schedule and when it fires next")
    settings_options(s)
    s = actions.add_parser("remove", help="delete a schedule")
    settings_options(s)
    s.add_argument("name", help="the schedule to delete")
    for action in actions.choices.values():
        action.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the schedule action against the store."""
    return anyio.run(schedule_command, args, settings, sys.stdout)


def _when(schedule: Schedule) -> str:
    return f"cron {schedule.cron}" if schedule.cron else f"every {schedule.every:g}s"


def _at(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


async def schedule_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Run one `schedule` action against the store of `settings`; the exit code."""
    schedules = Schedules.open(settings.store, settings.namespace)
    try:
        if args.schedule_command == "add":
            info = await schedules.add(
                args.name,
                args.prompt,
                session_id=args.session,
                cron=args.cron,
                every=args.every,
                agent=args.agent,
                replace=args.replace,
            )
            print(
                f"schedule {args.name}: {_when(info.schedule)}, next {_at(info.next_at)}", file=out
            )
            return 0
        if args.schedule_command == "list":
            found = await schedules.list()
            if not found:
                print(f"no schedules in namespace {settings.namespace!r}", file=out)
            for info in found:
                s = info.schedule
                agent = f" agent {s.agent}" if s.agent else ""
                print(
                    f"{s.name}  {_when(s)}  next {_at(info.next_at)}  session {s.session_id}"
                    f"{agent}  {s.prompt!r}",
                    file=out,
                )
            return 0
        if not await schedules.remove(args.name):
            raise ValueError(
                f"no schedule {args.name!r} in namespace {settings.namespace!r};"
                " `agentqueue schedule list` shows them"
            )
        print(f"schedule {args.name} removed", file=out)
        return 0
    finally:
        await schedules.close()
