"""`agentqueue schedule add|list|remove`: the schedules of a namespace, in its session store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TextIO

from agentqueue.settings import Settings
from agentqueue.workers.schedules import Schedule, Schedules


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
