"""The `agentqueue` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio

from agentqueue.settings import Settings

DEFAULT_APP = "examples.weather:app"

Command = Callable[[argparse.Namespace, Settings], int]
_commands: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _commands[name] = fn
        return fn

    return register


def _load_app(spec: str):  # type: ignore[no-untyped-def]
    from agentqueue.workers.app import load_app

    # Like uvicorn and celery: an app module in the current directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_app(spec)


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="broker URL: memory://, amqp://user:pass@host/, mns://… (AGENTQUEUE_BROKER)")
    p.add_argument("--store", help="session store URL: memory://, sqlite:///path, redis://host/0 (AGENTQUEUE_STORE)")
    p.add_argument("--namespace", help="prefix of every queue name (AGENTQUEUE_NAMESPACE, default aq)")
    p.add_argument("--partition-count", dest="partition_count", type=int,
                   help="partitions of the requests family (AGENTQUEUE_PARTITIONS, default 16)")
    p.add_argument("--tool-partition-count", dest="tool_partition_count", type=int,
                   help="partitions of the tools family (AGENTQUEUE_TOOL_PARTITIONS, default 16)")
    p.add_argument("--timeout", type=float, help="request deadline in seconds (default 300)")


def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace-file", dest="trace_file", metavar="FILE",
                   help="append spans as JSON lines to FILE (AGENTQUEUE_TRACE_FILE); OTEL_* variables add exporters")


@contextlib.contextmanager
def _telemetry(settings: Settings, service: str) -> Iterator[None]:
    """OpenTelemetry from OTEL_* and --trace-file for one command, flushed when it ends."""
    from agentqueue.trace_file import configure

    telemetry = configure(service, settings.trace_file)
    try:
        yield
    finally:
        telemetry.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentqueue", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run 3 conversations through an embedded broker and two workers")
    _settings_args(p)
    _trace_args(p)
    p.add_argument("--app", default=DEFAULT_APP)

    p = sub.add_parser("worker", help="serve an app's agents and tools from a broker")
    _settings_args(p)
    _trace_args(p)
    p.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the App (default examples.weather:app)")
    p.add_argument("--role", choices=["agents", "tools", "all"], default="all")
    p.add_argument("--partitions", dest="serve", default="all",
                   help="which partitions to serve, e.g. 0-7,12 (default all)")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="serve every given partition instead of sharing them with the other live workers")

    p = sub.add_parser("call", help="send one request and print the answer")
    _settings_args(p)
    _trace_args(p)
    p.add_argument("text")
    p.add_argument("--session", help="session id (default: a new one)")
    p.add_argument("--agent")
    p.add_argument("--stream", action="store_true", help="print text as it arrives")

    p = sub.add_parser("cancel", help="cancel a running request")
    _settings_args(p)
    p.add_argument("request_id")
    p.add_argument("--session", required=True)

    p = sub.add_parser("status", help="queue depths per partition and which worker is active on each")
    _settings_args(p)

    p = sub.add_parser("dlq", help="list, show or replay dead letters")
    _settings_args(p)
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("id", nargs="?", help="envelope id or list index (show, replay); replay without it replays all")
    p.add_argument("--limit", type=int, default=100)

    p = sub.add_parser("trace", help="look at spans written with --trace-file")
    trace_sub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    t = trace_sub.add_parser("show", help="a trace as a waterfall: service, span, start, duration, status")
    t.add_argument("files", nargs="+", metavar="FILE", help="trace files (one per process merge into one view)")
    t.add_argument("--trace-id", help="the trace to show, or a unique prefix of it (default: the latest)")
    t.add_argument("--width", type=int, default=100, help="columns to fit in (default 100)")

    p = sub.add_parser("schema", help="print the JSON Schema of the v1 envelope")

    p = sub.add_parser("config", help="print the settings in force (secrets masked)")
    _settings_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agentqueue` console script."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {
        "broker": getattr(args, "broker", None),
        "store": getattr(args, "store", None),
        "namespace": getattr(args, "namespace", None),
        "partitions": getattr(args, "partition_count", None),
        "tool_partitions": getattr(args, "tool_partition_count", None),
        "timeout": getattr(args, "timeout", None),
        "concurrency": getattr(args, "concurrency", None),
        "trace_file": getattr(args, "trace_file", None),
    }
    try:
        settings = Settings.load(**overrides)
        return _commands[args.command](args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI's last word: one line a user can act on
        from agentqueue.protocol.errors import AgentQueueError

        if not isinstance(exc, AgentQueueError | ValueError | OSError) or args.verbose:
            raise
        print(f"agentqueue {args.command}: {exc}", file=sys.stderr)
        return 1


@command("demo")
def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.demo import run_demo

    app = _load_app(args.app)
    with _telemetry(settings, "agentqueue-demo"):
        report = anyio.run(run_demo, app, settings)
    print(report.summary())
    return 0 if report.lost == 0 else 1


@command("worker")
def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.protocol.partitioning import parse_partitions
    from agentqueue.serve import serve_worker

    if args.verbose == 0:
        logging.getLogger("agentqueue").setLevel(logging.INFO)
    app = _load_app(args.app)
    partitions = parse_partitions(args.serve, settings.partitions)
    tool_partitions = parse_partitions(args.serve, settings.tool_partitions)
    with _telemetry(settings, "agentqueue-worker"):
        anyio.run(
        lambda: serve_worker(
            app, settings, role=args.role, partitions=partitions, tool_partitions=tool_partitions, balance=args.balance
        )
    )
    return 0


@command("call")
def _call(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.client import Client

    async def go() -> int:
        async with Client(settings.broker, topology=settings.topology, default_timeout=settings.timeout) as client:
            if args.stream:
                final = None
                async for event in client.stream(args.text, session_id=args.session, agent=args.agent):
                    if event.kind == "delta":
                        print(event.text, end="", flush=True)
                    else:
                        final = event
                print()
                assert final is not None
                if final.kind != "final":
                    print(f"{final.kind}: {final.error}", file=sys.stderr)
                    return 1
                return 0
            result = await client.call(args.text, session_id=args.session, agent=args.agent)
            print(result.text)
            return 0

    with _telemetry(settings, "agentqueue-client"):
        return anyio.run(go)


@command("cancel")
def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.client import Client

    async def go() -> None:
        async with Client(settings.broker, topology=settings.topology) as client:
            await client.cancel(args.request_id, session_id=args.session)

    anyio.run(go)
    print(f"cancel sent for {args.request_id}")
    return 0


@command("status")
def _status(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.admin import print_status
    from agentqueue.broker.urls import open_broker

    async def go() -> None:
        async with open_broker(settings.broker) as broker:
            await broker.declare(settings.topology)
            await print_status(broker, settings.topology, sys.stdout)

    anyio.run(go)
    return 0


@command("dlq")
def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue import admin
    from agentqueue.broker.urls import open_broker

    async def go() -> int:
        async with open_broker(settings.broker) as broker:
            await broker.declare(settings.topology)
            if args.action == "list":
                await admin.dlq_list(broker, settings.topology, sys.stdout, args.limit)
                return 0
            if args.action == "show":
                if args.id is None:
                    raise ValueError("dlq show needs an envelope id or a list index")
                found = await admin.dlq_show(broker, settings.topology, args.id, sys.stdout)
                if not found:
                    print(f"no dead letter {args.id!r} in {settings.topology.dead_letter_queue}", file=sys.stderr)
                return 0 if found else 1
            count = await admin.dlq_replay(broker, settings.topology, args.id, sys.stdout)
            print(f"{count} replayed")
            return 0

    return anyio.run(go)


@command("trace")
def _trace(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.trace_file import read_spans
    from agentqueue.trace_view import render_waterfall

    for line in render_waterfall(read_spans(args.files), args.trace_id, width=args.width):
        print(line)
    return 0


@command("schema")
def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.protocol.schema import envelope_schema

    print(json.dumps(envelope_schema(), indent=2))
    return 0


@command("config")
def _config(args: argparse.Namespace, settings: Settings) -> int:
    for key, value in settings.masked().items():
        print(f"{key:16} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
