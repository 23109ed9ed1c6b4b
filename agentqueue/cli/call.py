"""`agentqueue call`: send one request and print the answer (or stream it)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio

from agentqueue.cli.options import settings_options, trace_option
from agentqueue.cli.running import require_shared_broker, telemetry, with_client
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands
    from agentqueue.client import Client, RequestHandle


def register(commands: Commands) -> None:
    """Add `call`."""
    p = commands.add_parser("call", help="send one request and print the answer")
    settings_options(p)
    trace_option(p)
    p.add_argument("text", help="the request text")
    p.add_argument("--session", help="session id (default: a new one)")
    p.add_argument("--agent", help="agent to ask (default: the app's default agent)")
    p.add_argument("--stream", action="store_true", help="print text as it arrives")
    p.add_argument(
        "--delay", type=float, help="seconds before the request may start (default: at once)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Send the request, print its id on stderr and its answer on stdout; 130 on Ctrl-C."""
    require_shared_broker(settings, "call")
    with telemetry(settings, "agentqueue-client"):
        return with_client(settings, "call", lambda client: _call(args, client))


async def _call(args: argparse.Namespace, client: Client) -> int:
    from agentqueue.workers import spans

    interrupted = False
    with spans.round_trip("call", args.agent) as trip:
        with trip.current():
            handle = await client.submit(
                args.text, session_id=args.session, agent=args.agent, delay=args.delay
            )

        async def cancel_on_sigint(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            # Ctrl-C abandons nothing: the worker is told to stop, so the session's
            # next turn does not wait for this one.
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    interrupted = True
                    with anyio.CancelScope(shield=True):
                        await handle.cancel()
                    print(f"cancel sent for {handle.id}", file=sys.stderr, flush=True)
                    tg.cancel_scope.cancel()
                    return

        code = 1
        async with anyio.create_task_group() as tg:
            await tg.start(cancel_on_sigint)
            # stderr, so stdout stays the answer; the id is what `agentqueue cancel` takes.
            print(f"request {handle.id} session {handle.session_id}", file=sys.stderr, flush=True)
            code = await _answer(args, handle, trip)
            tg.cancel_scope.cancel()
    return 130 if interrupted else code


async def _answer(args: argparse.Namespace, handle: RequestHandle, trip: Any) -> int:
    from agentqueue.client import raise_for_kind
    from agentqueue.errors import RequestError

    async for event in handle.events():
        trip.result(event)
        if event.kind == "delta":
            if args.stream and event.restart:  # what was printed is void: say so
                print(f"\n[attempt {event.attempt} starts over]", file=sys.stderr, flush=True)
            elif args.stream:
                print(event.text, end="", flush=True)
            continue
        if event.kind == "approval_required" and event.approval is not None:
            asked = event.approval
            print(
                f"approval required: tool {asked.tool} {json.dumps(asked.arguments)}"
                f" (call {asked.call_id}); agentqueue approve|deny {handle.id}"
                f" --session {handle.session_id}",
                file=sys.stderr,
                flush=True,
            )
            continue
        if args.stream:
            print()
            if event.kind != "final":
                print(f"{event.kind}: {event.error}", file=sys.stderr)
                return 1
            return 0
        try:
            print(raise_for_kind(event).text)
        except RequestError as exc:  # inside a task group: say it here, in main's words
            print(f"agentqueue call: {exc}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError("unreachable: events() always ends with a terminal event")
