"""The `agentqueue` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from agentqueue.broker.urls import redact_url
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.client import RequestHandle

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


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ([], "")
        shown = not empty and action.default is not argparse.SUPPRESS
        if shown and "default" not in text and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


def _settings_args(p: argparse.ArgumentParser) -> None:
    defaults = Settings()
    p.add_argument(
        "--broker",
        help="broker URL: memory://, amqp://user:pass@host/, mns://… (AGENTQUEUE_BROKER,"
        f" default {defaults.broker})",
    )
    p.add_argument(
        "--store",
        help="session store URL: memory://, sqlite:///path, redis://host/0 (AGENTQUEUE_STORE,"
        f" default {defaults.store})",
    )
    p.add_argument(
        "--namespace",
        help=f"prefix of every queue name (AGENTQUEUE_NAMESPACE, default {defaults.namespace})",
    )
    p.add_argument(
        "--partition-count",
        dest="partition_count",
        type=int,
        help="partitions of the requests family (AGENTQUEUE_PARTITIONS,"
        f" default {defaults.partitions})",
    )
    p.add_argument(
        "--tool-partition-count",
        dest="tool_partition_count",
        type=int,
        help="partitions of the tools family (AGENTQUEUE_TOOL_PARTITIONS,"
        f" default {defaults.tool_partitions})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help=f"request deadline in seconds (AGENTQUEUE_TIMEOUT, default {defaults.timeout:g})",
    )
    _verbose(p, argparse.SUPPRESS)


def _verbose(p: argparse.ArgumentParser, default: Any) -> None:
    # Also after the subcommand (`agentqueue worker -v`), like every other global flag.
    p.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging (-vv for debug)"
    )


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def _version() -> str:
    from agentqueue.workers.membership import package_version

    return package_version()


def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace-file",
        dest="trace_file",
        metavar="FILE",
        help="append spans as JSON lines to FILE (AGENTQUEUE_TRACE_FILE);"
        " OTEL_* variables add exporters (default: none)",
    )


def _metrics_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        metavar="PORT",
        help=f"serve Prometheus metrics of {what} at http://HOST:PORT/metrics (default: off)",
    )
    p.add_argument(
        "--metrics-host",
        dest="metrics_host",
        default="127.0.0.1",
        help="address the metrics listen on; 0.0.0.0 for a scraper elsewhere",
    )


@contextlib.contextmanager
def _telemetry(
    settings: Settings,
    service: str,
    metrics_at: tuple[str, int] | None = None,
    *,
    prometheus: bool = False,
) -> Iterator[None]:
    """OpenTelemetry from OTEL_* and --trace-file for one command, flushed when it ends;
    `metrics_at` (host, port) also serves its metrics to Prometheus there; `prometheus` keeps
    them for a `/metrics` the command serves itself."""
    from agentqueue.trace_file import configure

    keep = prometheus or metrics_at is not None
    telemetry = configure(service, settings.trace_file, prometheus=keep)
    server = None
    try:
        if metrics_at is not None:
            from agentqueue.prometheus import MetricsServer

            server = MetricsServer(*metrics_at)
        yield
    finally:
        if server is not None:
            server.close()
        telemetry.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentqueue {_version()}")
    _verbose(parser, 0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="run 3 conversations through an embedded broker and two workers"
    )
    _settings_args(p)
    _trace_args(p)
    p.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the App")
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

    p = sub.add_parser(
        "local", help="servers for development: RabbitMQ, an MNS server, an FC emulator, a model"
    )
    local_sub = p.add_subparsers(dest="local_command", required=True, metavar="SERVICE")
    r = local_sub.add_parser(
        "rabbitmq", help="run a private RabbitMQ node on 127.0.0.1 until Ctrl-C (prints its URL)"
    )
    r.add_argument("--port", type=int, default=5672, help="AMQP port on 127.0.0.1 (0: any free)")
    r.add_argument(
        "--data-dir",
        dest="data_dir",
        help="the node's data folder, kept across runs (default: rabbitmq/ in the state"
        " folder, beside the default session store)",
    )
    m = local_sub.add_parser("mns", help="serve an MNS-compatible queue API (state in SQLite)")
    m.add_argument("--host", default="127.0.0.1", help="address to listen on")
    m.add_argument("--port", type=int, default=9911, help="port to listen on")
    m.add_argument("--db", default=".agentqueue/mns.db", help="SQLite file for the queues")
    m.add_argument(
        "--access-key-id",
        dest="access_key_id",
        help="AccessKeyId to accept (ALIBABA_CLOUD_ACCESS_KEY_ID; default local-mns on loopback)",
    )
    m.add_argument(
        "--access-key-secret",
        dest="access_key_secret",
        help="its secret (ALIBABA_CLOUD_ACCESS_KEY_SECRET; default local-mns-secret on loopback)",
    )
    o = local_sub.add_parser(
        "openai", help="serve an OpenAI-compatible chat API that echoes (a model stand-in)"
    )
    o.add_argument("--host", default="127.0.0.1", help="address to listen on")
    o.add_argument("--port", type=int, default=8400, help="port to listen on")
    o.add_argument(
        "--model",
        action="append",
        default=[],
        help="a model name it serves; repeat for more (default: any name)",
    )
    o.add_argument(
        "--rate-limit",
        dest="rate_limit",
        type=int,
        help="requests per second it accepts, refusing more with 429 (default: no limit)",
    )
    f = local_sub.add_parser("fc", help="emulate FC: MNS triggers, instance processes")
    _settings_args(f)
    f.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the App")
    f.add_argument("--instances", type=int, default=4, help="most instances at once (default 4)")
    f.add_argument(
        "--idle-timeout",
        dest="idle_timeout",
        type=float,
        default=30.0,
        help="seconds an idle instance lives before scale-to-zero (default 30)",
    )
    f.add_argument(
        "--batch-size", dest="batch_size", type=int, default=10, help="messages per invocation"
    )
    f.add_argument("--batch-window", dest="batch_window", type=float, default=0.5, help="seconds")

    p = sub.add_parser("worker", help="serve an app's agents and tools from a broker")
    _settings_args(p)
    _trace_args(p)
    p.add_argument(
        "--app",
        default=DEFAULT_APP,
        help="module:attribute of the App (default examples.weather:app)",
    )
    p.add_argument(
        "--role",
        choices=["agents", "tools", "all"],
        default="all",
        help="serve agent requests, tool calls, or both",
    )
    p.add_argument(
        "--partitions",
        dest="serve",
        default="all",
        help="which partitions to serve, e.g. 0-7,12 (default all)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help=f"events run at once (AGENTQUEUE_CONCURRENCY, default {Settings().concurrency})",
    )
    p.add_argument(
        "--no-balance",
        dest="balance",
        action="store_const",
        const=False,
        default=None,
        help="serve every given partition instead of sharing them with the other live workers"
        " (AGENTQUEUE_BALANCE=false)",
    )
    p.add_argument(
        "--require-signing",
        dest="require_signing",
        action="store_true",
        help="refuse to start without signing keys (AGENTQUEUE_SIGNING_KEYS)",
    )
    _metrics_args(p, "this worker")

    p = sub.add_parser("call", help="send one request and print the answer")
    _settings_args(p)
    _trace_args(p)
    p.add_argument("text", help="the request text")
    p.add_argument("--session", help="session id (default: a new one)")
    p.add_argument("--agent", help="agent to ask (default: the app's default agent)")
    p.add_argument("--stream", action="store_true", help="print text as it arrives")
    p.add_argument(
        "--delay", type=float, help="seconds before the request may start (default: at once)"
    )

    p = sub.add_parser(
        "attach", help="follow a running or recently finished request's stream from here"
    )
    _settings_args(p)
    p.add_argument("request_id", help="id of the request (`call` prints it)")
    p.add_argument(
        "--after", type=int, default=0, help="the last seq already seen (default 0: from the start)"
    )
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")

    p = sub.add_parser("cancel", help="cancel a running request")
    _settings_args(p)
    p.add_argument("request_id", help="id of the request to cancel (`call` prints it)")
    p.add_argument("--session", required=True, help="session id of that request")

    for decision, does in (("approve", "run it and resume"), ("deny", "resume without it")):
        p = sub.add_parser(decision, help=f"{decision} a paused request's tool call: {does}")
        _settings_args(p)
        p.add_argument("request_id", help="id of the paused request (`call` prints it)")
        p.add_argument("--session", required=True, help="session id of that request")
        p.add_argument("--call", dest="call_id", help="tool call id (default: the one waiting)")
        if decision == "deny":
            p.add_argument("--reason", help="why, for the agent to explain (default: none given)")

    p = sub.add_parser(
        "status", help="queue depths per partition and which worker is active on each"
    )
    _settings_args(p)

    p = sub.add_parser("usage", help="model calls and tokens per model over the last window")
    _settings_args(p)
    p.add_argument("--window", type=float, default=60.0, help="seconds to look back (default 60)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("dlq", help="list, show, replay or purge dead letters")
    _settings_args(p)
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

    p = sub.add_parser("trace", help="look at spans written with --trace-file")
    trace_sub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    t = trace_sub.add_parser(
        "show", help="a trace as a waterfall: service, span, start, duration, status"
    )
    t.add_argument(
        "files", nargs="+", metavar="FILE", help="trace files (one per process merge into one view)"
    )
    t.add_argument(
        "--trace-id", help="the trace to show, or a unique prefix of it (default: the latest)"
    )
    t.add_argument("--width", type=int, default=100, help="columns to fit in (default 100)")

    p = sub.add_parser("batch", help="run a JSONL file of requests, results to JSONL (resumable)")
    batch_sub = p.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    b = batch_sub.add_parser("run", help="send every line of INPUT, write one result line per item")
    _settings_args(b)
    _trace_args(b)
    b.add_argument("input", metavar="INPUT.jsonl", help="one JSON request per line")
    b.add_argument(
        "-o", "--output", required=True, metavar="RESULTS.jsonl", help="results, one per line"
    )
    b.add_argument("--name", help="batch name (default: a hash of both paths); same name resumes")
    b.add_argument(
        "--max-in-flight",
        dest="max_in_flight",
        type=int,
        default=64,
        help="items sent and not yet answered at most",
    )
    b.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-send a failed or timed out item up to N times (default 1)",
    )
    b.add_argument(
        "--agent", help="agent for lines that do not name one (default: the app's default agent)"
    )
    b.add_argument(
        "--score",
        metavar="MODULE:FUNCTION",
        help="score(item, result) -> float; the summary shows the mean (default: none)",
    )
    b.add_argument(
        "--summary-json",
        dest="summary_json",
        metavar="FILE",
        help="also write the summary as JSON (default: none)",
    )
    b.add_argument(
        "--progress",
        choices=["auto", "bar", "lines"],
        default="auto",
        help="a bar on a terminal, lines otherwise (auto)",
    )
    b.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN/OUT",
        help="USD per million prompt/completion tokens, for the cost estimate"
        " (AGENTQUEUE_PRICES; default: none, so no cost is shown)",
    )
    b.add_argument(
        "--keep-queue",
        dest="keep_queue",
        action="store_true",
        help="keep the batch's reply queue when every item is done",
    )
    b.add_argument(
        "--app",
        metavar="MODULE:ATTRIBUTE",
        help="serve this App in this process for the batch (with no --broker: on an embedded"
        " broker, no other process needed); default: workers elsewhere answer",
    )
    f = batch_sub.add_parser(
        "forget", help="delete an unfinished batch's reply queue (it will not be resumed)"
    )
    _settings_args(f)
    f.add_argument("name", help="the batch name its summary printed (or --name gave)")

    p = sub.add_parser("ingress", help="accept agent requests over HTTP (JSON, CloudEvents)")
    ingress_sub = p.add_subparsers(dest="ingress_command", required=True, metavar="KIND")
    i = ingress_sub.add_parser("http", help="POST /v1/requests, GET /v1/requests/{id}[/events]")
    _settings_args(i)
    _trace_args(i)
    i.add_argument("--host", default="127.0.0.1", help="address to listen on")
    i.add_argument("--port", type=int, default=8080, help="port to listen on")
    i.add_argument(
        "--signing-key",
        dest="signing_key",
        metavar="KEY",
        help="require Standard Webhooks signatures under this whsec_ secret, and bearer tokens"
        " on GET/DELETE (AGENTQUEUE_INGRESS_KEY; @path reads it from a file; default: none)",
    )
    i.add_argument(
        "--max-body",
        dest="max_body",
        type=int,
        default=256 * 1024,
        help="largest request body in bytes (default 256 KiB)",
    )
    i.add_argument(
        "--retention",
        type=float,
        default=3600.0,
        help="seconds a result stays readable (default 3600)",
    )
    i.add_argument(
        "--agent", help="agent for requests that do not name one (default: the app's default agent)"
    )
    i.add_argument(
        "--header-timeout",
        dest="header_timeout",
        type=float,
        default=10.0,
        help="seconds a connection has to send its request headers (default 10)",
    )
    i.add_argument(
        "--body-timeout",
        dest="body_timeout",
        type=float,
        default=30.0,
        help="seconds a request has to send its body after the headers (default 30)",
    )
    i.add_argument(
        "--max-connections",
        dest="max_connections",
        type=int,
        default=512,
        help="open connections at most; more are answered 503 (default 512)",
    )

    p = sub.add_parser(
        "console", help="a web page: partitions, workers, requests, traces, dead letters"
    )
    _settings_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8090, help="port to listen on")
    p.add_argument(
        "--token",
        help="bearer token the page requires (AGENTQUEUE_CONSOLE_TOKEN; @path reads a file);"
        " needed off loopback (default: none on 127.0.0.1)",
    )
    p.add_argument(
        "--spans",
        action="append",
        default=[],
        metavar="FILE",
        help="a --trace-file of a worker or client, for request waterfalls; repeat for more"
        " (default: none)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between looks at the broker"
    )

    p = sub.add_parser("deploy", help="provision the cloud for an app's workers")
    deploy_sub = p.add_subparsers(dest="deploy_target", required=True, metavar="TARGET")
    d = deploy_sub.add_parser("fc", help="Alibaba Cloud Function Compute 3.0 behind MNS queues")
    action = d.add_mutually_exclusive_group(required=True)
    for flag, what in (
        ("plan", "print every resource it would create (--json for machines)"),
        ("apply", "create what is missing, update what differs"),
        ("destroy", "remove the triggers, the function and the queues"),
        ("package", "build the code zip FC runs"),
    ):
        action.add_argument(f"--{flag}", dest="action", action="store_const", const=flag, help=what)
    d.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the App")
    for flag, dest, kind in (
        ("--broker", "broker", str),
        ("--store", "store", str),
        ("--namespace", "namespace", str),
        ("--partition-count", "partition_count", int),
        ("--tool-partition-count", "tool_partition_count", int),
    ):
        d.add_argument(
            flag, dest=dest, type=kind, help=f"as for `worker` ({dest}; default: as for `worker`)"
        )
    d.add_argument(
        "--region",
        default=os.environ.get("ALIBABA_CLOUD_REGION_ID", "cn-hangzhou"),
        help="region id (ALIBABA_CLOUD_REGION_ID)",
    )
    d.add_argument(
        "--account-id",
        dest="account_id",
        help="Alibaba Cloud account (uid; default: from the credentials)",
    )
    d.add_argument("--function-name", dest="function_name", help="default <namespace>-worker")
    d.add_argument("--memory", type=int, default=1024, help="MB (default 1024)")
    d.add_argument("--cpu", type=float, help="vCPU (default 1 per GB of memory)")
    d.add_argument(
        "--timeout",
        dest="function_timeout",
        type=int,
        default=900,
        help="seconds one invocation (a batch) may run (default 900)",
    )
    d.add_argument(
        "--role-arn", dest="role_arn", help="RAM role the function runs as (default: none)"
    )
    d.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="extra function environment; NAME alone copies it from here (default: none)",
    )
    d.add_argument("--preload", default="", help="modules the initializer imports (default: none)")
    d.add_argument(
        "--provisioned-instances",
        dest="provisioned_instances",
        type=int,
        help="instances kept started and initialised, the warm pool (default: 0, none)",
    )
    d.add_argument(
        "--batch-size", dest="batch_size", type=int, default=10, help="messages per invocation"
    )
    d.add_argument("--batch-window", dest="batch_window", type=int, default=0, help="seconds")
    d.add_argument("--code", default="dist/agentqueue-fc.zip", help="zip or oss://bucket/object")
    d.add_argument("-o", "--output", default="dist/agentqueue-fc.zip", help="--package's zip")
    d.add_argument(
        "--no-deps",
        dest="no_deps",
        action="store_true",
        help="--package without dependencies (layout checks, offline)",
    )
    d.add_argument("--json", action="store_true", help="--plan as JSON")
    d.add_argument(
        "--fc-endpoint",
        dest="fc_endpoint",
        help="e.g. http://127.0.0.1:9000 (default: the region's endpoint)",
    )
    d.add_argument(
        "--mns-endpoint",
        dest="mns_endpoint",
        help="MNS control plane (open API; default: the region's endpoint)",
    )

    p = sub.add_parser("schedule", help="add, list or remove recurring requests")
    schedule_sub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    s = schedule_sub.add_parser("add", help="send PROMPT to a session at every tick")
    _settings_args(s)
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
    s = schedule_sub.add_parser("list", help="every schedule and when it fires next")
    _settings_args(s)
    s = schedule_sub.add_parser("remove", help="delete a schedule")
    _settings_args(s)
    s.add_argument("name", help="the schedule to delete")

    p = sub.add_parser("schema", help="print the JSON Schema of the v1 envelope")

    p = sub.add_parser("config", help="print the settings in force (secrets masked)")
    _settings_args(p)
    for each in _parsers(parser):
        each.formatter_class = _Help
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agentqueue` console script."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, Any] = {
        "broker": getattr(args, "broker", None),
        "store": getattr(args, "store", None),
        "namespace": getattr(args, "namespace", None),
        "partitions": getattr(args, "partition_count", None),
        "tool_partitions": getattr(args, "tool_partition_count", None),
        "timeout": getattr(args, "timeout", None),
        "concurrency": getattr(args, "concurrency", None),
        "balance": getattr(args, "balance", None),
        "trace_file": getattr(args, "trace_file", None),
        "provisioned_instances": getattr(args, "provisioned_instances", None),
    }
    try:
        settings = Settings.load(**overrides)
        return _commands[args.command](args, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI's last word: one line a user can act on
        from agentqueue.protocol.errors import AgentQueueError

        error = _sole_error(exc)
        if not isinstance(error, AgentQueueError | ValueError | OSError) or args.verbose:
            raise
        print(f"agentqueue {args.command}: {error}", file=sys.stderr)
        return 1


def _sole_error(exc: BaseException) -> BaseException:
    """The one error inside (nested) task-group groups of one, else `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@command("demo")
def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.demo import run_demo

    app = _load_app(args.app)
    if args.cloud_local:
        from agentqueue.demo_cloud import run_cloud_local_demo

        report = anyio.run(run_cloud_local_demo, args.app, settings)
        print(report.summary())
        return 0 if report.lost == 0 else 1
    if args.sandbox:
        from agentqueue.demo import run_sandbox_demo

        report = anyio.run(run_sandbox_demo, settings)
        print(report.summary())
        return 0 if report.lost == 0 else 1
    with _telemetry(settings, "agentqueue-demo"):
        report = anyio.run(run_demo, app, settings)
    print(report.summary())
    return 0 if report.lost == 0 else 1


@command("worker")
def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.protocol.partitioning import parse_partitions
    from agentqueue.serve import serve_worker
    from agentqueue.workers import models

    _require_shared_broker(settings, "worker")
    if args.require_signing:
        from agentqueue.workers.admission import check_signing
        from agentqueue.workers.errors import SigningRequired

        try:
            check_signing(settings.key_ring(), require=True)
        except SigningRequired as exc:
            print(f"agentqueue worker: {exc}", file=sys.stderr)
            return 2
    if args.verbose == 0:
        logging.getLogger("agentqueue").setLevel(logging.INFO)
    # Rate limits and usage live beside the sessions; a model that cannot be used stops the
    # start here, with one line (ModelConfigError), before anything connects.
    models.configure(store_url=settings.store, namespace=settings.namespace)
    if args.role != "tools":
        models.describe_model(settings.namespace)
    app = _load_app(args.app)
    partitions = parse_partitions(args.serve, settings.partitions)
    tool_partitions = parse_partitions(args.serve, settings.tool_partitions)
    metrics_at = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None
    with _telemetry(settings, "agentqueue-worker", metrics_at):
        anyio.run(
            lambda: serve_worker(
                app,
                settings,
                role=args.role,
                partitions=partitions,
                tool_partitions=tool_partitions,
            )
        )
    return 0


@command("call")
def _call(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from agentqueue.broker import tracing
    from agentqueue.client import Client, raise_for_kind
    from agentqueue.errors import RequestError

    _require_shared_broker(settings, "call")

    async def answer(handle: RequestHandle, trip: Any) -> int:
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

    async def go() -> int:
        interrupted = False
        async with Client(
            settings.broker, topology=settings.topology, default_timeout=settings.timeout
        ) as client:
            with tracing.round_trip("call", args.agent) as trip:
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
                    print(
                        f"request {handle.id} session {handle.session_id}",
                        file=sys.stderr,
                        flush=True,
                    )
                    code = await answer(handle, trip)
                    tg.cancel_scope.cancel()
        return 130 if interrupted else code

    with _telemetry(settings, "agentqueue-client"):
        return anyio.run(go)


@command("attach")
def _attach(args: argparse.Namespace, settings: Settings) -> int:
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


@command("cancel")
def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.client import Client

    _require_shared_broker(settings, "cancel")

    async def go() -> None:
        async with Client(settings.broker, topology=settings.topology) as client:
            await client.cancel(args.request_id, session_id=args.session)

    anyio.run(go)
    print(f"cancel sent for {args.request_id}")
    return 0


@command("approve")
def _approve(args: argparse.Namespace, settings: Settings) -> int:
    return _decide(args, settings, approved=True)


@command("deny")
def _deny(args: argparse.Namespace, settings: Settings) -> int:
    return _decide(args, settings, approved=False)


def _decide(args: argparse.Namespace, settings: Settings, *, approved: bool) -> int:
    """Send a decision and print the resumed turn's answer (stderr: its kind when not final)."""
    from agentqueue.client import Client
    from agentqueue.errors import RequestError

    what = "approve" if approved else "deny"
    _require_shared_broker(settings, what)

    async def go() -> int:
        async with Client(
            settings.broker, topology=settings.topology, default_timeout=settings.timeout
        ) as client:
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

    return anyio.run(go)


@command("status")
def _status(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.admin import print_status

    _require_shared_broker(settings, "status")

    async def go() -> int:
        async with settings.open_broker() as broker:
            if not await _namespace_exists(broker, settings, "status"):
                return 1
            await print_status(broker, settings.topology, sys.stdout)
            return 0

    return anyio.run(go)


async def _namespace_exists(broker: Any, settings: Settings, what: str) -> bool:
    """Whether the namespace's queues exist, looked up without declaring (so never created)."""
    from agentqueue.broker.errors import QueueMissing

    try:
        await broker.stats(settings.topology.dead_letter_queue)
    except QueueMissing:
        print(
            f"agentqueue {what}: no queues for namespace {settings.namespace!r} on"
            f" {redact_url(settings.broker)}; check --namespace (AGENTQUEUE_NAMESPACE), or start"
            " a worker, which declares them",
            file=sys.stderr,
        )
        return False
    return True


@command("usage")
def _usage(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.usage_report import print_usage, read_usage, usage_json

    rows = anyio.run(read_usage, settings.store, settings.namespace, args.window)
    if args.json:
        print(usage_json(rows))
    else:
        print_usage(rows, settings.namespace, args.window)
    return 0


@command("dlq")
def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue import admin
    from agentqueue.client import Client

    _require_shared_broker(settings, f"dlq {args.action}")
    if args.action == "purge" and args.id is None:
        raise ValueError(
            "dlq purge deletes dead letters for good: name an envelope id or list index, or"
            " `all` to purge every one"
        )

    async def go() -> int:
        async with settings.open_broker() as broker:
            if not await _namespace_exists(broker, settings, f"dlq {args.action}"):
                return 1
            if args.action == "list":
                await admin.dlq_list(broker, settings.topology, sys.stdout, args.limit)
                return 0
            if args.action == "show":
                if args.id is None:
                    raise ValueError("dlq show needs an envelope id or a list index")
                found = await admin.dlq_show(broker, settings.topology, args.id, sys.stdout)
                if not found:
                    print(
                        f"no dead letter {args.id!r} in {settings.topology.dead_letter_queue}",
                        file=sys.stderr,
                    )
                return 0 if found else 1
            if args.action == "purge":
                key = None if args.id == "all" else args.id
                count = await admin.dlq_purge(broker, settings.topology, key, sys.stdout)
                print(f"{count} purged")
                return 0 if count or key is None else 1
            if args.to_caller:
                sent = await admin.dlq_replay(broker, settings.topology, args.id, sys.stdout)
                print(f"{len(sent)} replayed; answers go to their original callers")
                return 0
            async with Client(broker, settings=settings) as caller:
                sent = await admin.dlq_replay(
                    broker, settings.topology, args.id, sys.stdout, caller=caller
                )
                print(f"{len(sent)} replayed; waiting for their answers")
                return await _print_answers([r.handle for r in sent if r.handle])

    return anyio.run(go)


async def _print_answers(handles: list[RequestHandle]) -> int:
    """Wait for each request's terminal event and print it; 0 when every one is `final`."""
    finals = 0
    for handle in handles:
        event = await handle.result()
        text = event.text if event.kind == "final" else event.error
        print(f"{handle.id}: {event.kind}: {text}")
        finals += event.kind == "final"
    return 0 if finals == len(handles) else 1


@command("trace")
def _trace(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.trace_file import read_spans
    from agentqueue.trace_view import render_waterfall

    for line in render_waterfall(read_spans(args.files), args.trace_id, width=args.width):
        print(line)
    return 0


def _require_shared_broker(settings: Settings, what: str) -> None:
    # memory:// lives inside one process: no worker of another process would ever answer.
    if settings.broker.startswith("memory:"):
        raise ValueError(
            f"{what} needs a broker that workers share: pass --broker amqp://… or mns://…"
            " (or set AGENTQUEUE_BROKER); memory:// exists only inside one process"
            " (`agentqueue demo` runs an embedded broker and its workers in one process)"
        )


@command("console")
def _console(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.console import read_token, serve_console

    _require_shared_broker(settings, "console")
    token = read_token(args.token or settings.console_token)
    with _telemetry(settings, "agentqueue-console", metrics_at=None, prometheus=True):
        anyio.run(
            lambda: serve_console(
                settings,
                host=args.host,
                port=args.port,
                token=token,
                span_files=args.spans,
                interval=args.interval,
            )
        )
    return 0


@command("batch")
def _batch(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.batch import run_batch
    from agentqueue.batch_report import load_score
    from agentqueue.batch_tokens import parse_prices, prices_from_env
    from agentqueue.workers.worker import Worker

    if args.batch_command == "forget":
        return _batch_forget(args, settings)
    app = _load_app(args.app) if args.app else None
    if app is None:
        _require_shared_broker(settings, "batch run")
    elif settings.broker.startswith("memory:"):
        settings = dataclasses.replace(settings, broker=f"memory://batch-{os.getpid()}")
    score = load_score(args.score) if args.score else None
    prices = {**prices_from_env(), **parse_prices(",".join(args.price))}
    progress = {"auto": None, "bar": True, "lines": False}[args.progress]

    async def go():  # type: ignore[no-untyped-def]
        # The store is where the console reads the run's progress (and where an embedded
        # worker keeps its sessions).
        store = settings.open_store()
        try:
            async with settings.open_broker() as broker, contextlib.AsyncExitStack() as serving:
                if app is not None:
                    worker = Worker(app, broker, store, settings)
                    await serving.enter_async_context(worker.running())
                return await batch(broker, store)
        finally:
            await store.close()

    async def batch(broker: Any, store: Any):  # type: ignore[no-untyped-def]
        return await run_batch(
            broker,
            args.input,
            args.output,
            topology=settings.topology,
            name=args.name,
            max_in_flight=args.max_in_flight,
            timeout=settings.timeout,
            retries=args.retries,
            agent=args.agent,
            score=score,
            progress=progress,
            keep_queue=args.keep_queue,
            prices=prices,
            progress_store=store,
        )

    try:
        with _telemetry(settings, "agentqueue-batch"):
            summary = anyio.run(go)
    except KeyboardInterrupt:
        print(
            f"interrupted: results so far are in {args.output}; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    summary.render(sys.stdout)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
    return 0 if summary.complete else 1


def _batch_forget(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.batch_files import check_name

    _require_shared_broker(settings, "batch forget")
    queue = settings.topology.reply_queue(f"batch-{check_name(args.name)}")

    async def go() -> None:
        async with settings.open_broker() as broker:
            await broker.delete_queue(queue)

    anyio.run(go)
    print(f"deleted {queue}; running the batch again starts it afresh")
    return 0


@command("ingress")
def _ingress(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.ingress import serve_ingress
    from agentqueue.ingress_auth import WebhookKeys
    from agentqueue.ingress_server import Limits

    _require_shared_broker(settings, "ingress http")
    key = args.signing_key or settings.ingress_key
    if key and key.startswith("@"):
        with open(key[1:]) as f:
            key = f.read().strip()
    keys = WebhookKeys.parse(key) if key else None
    limits = Limits(args.header_timeout, args.body_timeout, args.max_connections)
    with _telemetry(settings, "agentqueue-ingress"):
        anyio.run(
            lambda: serve_ingress(
                settings,
                host=args.host,
                port=args.port,
                keys=keys,
                max_body=args.max_body,
                retention=args.retention,
                agent=args.agent,
                limits=limits,
            )
        )
    return 0


@command("local")
def _local(args: argparse.Namespace, settings: Settings) -> int:
    if args.local_command == "rabbitmq":
        return _local_rabbitmq(args)
    if args.local_command == "mns":
        from agentqueue.deploy.local_mns import serve, server_credentials

        credentials = server_credentials(args.host, args.access_key_id, args.access_key_secret)
        os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
        print(
            f"{credentials.describe()}; broker URL mns://{args.host}:{args.port}", file=sys.stderr
        )
        serve(args.host, args.port, args.db, credentials.access_id, credentials.access_key)
        return 0
    if args.local_command == "openai":
        from agentqueue.deploy.local_openai import DEFAULT_MODEL, LocalOpenAI

        names = args.model or [DEFAULT_MODEL]
        limit = (args.rate_limit, 1.0) if args.rate_limit else None
        with LocalOpenAI(host=args.host, port=args.port, models=names, rate_limit=limit) as api:
            print(f"OPENAI_BASE_URL={api.url} AGENTQUEUE_MODEL={names[0]}", file=sys.stderr)
            _wait_for_stop()
        return 0
    from agentqueue.deploy.local_fc import TriggerConfig, serve_local_fc

    _load_app(args.app)  # fail here, not in every instance, when the app does not import
    env = {
        "AGENTQUEUE_APP": args.app,
        "AGENTQUEUE_BROKER": settings.broker,
        "AGENTQUEUE_STORE": settings.store,
        "AGENTQUEUE_NAMESPACE": settings.namespace,
        "AGENTQUEUE_PARTITIONS": str(settings.partitions),
        "AGENTQUEUE_TOOL_PARTITIONS": str(settings.tool_partitions),
        "AGENTQUEUE_MAX_ATTEMPTS": str(settings.max_attempts),
        "AGENTQUEUE_LEASE_TTL": str(settings.lease_ttl),
    }
    trigger = TriggerConfig(batch_size=args.batch_size, batch_window=args.batch_window)
    stats = anyio.run(
        lambda: serve_local_fc(
            settings.broker,
            settings.topology,
            env,
            max_instances=args.instances,
            idle_timeout=args.idle_timeout,
            trigger=trigger,
            provisioned=settings.provisioned_instances,
        )
    )
    print(stats.report())
    return 0


def _local_rabbitmq(args: argparse.Namespace) -> int:
    from agentqueue.deploy.local_rabbitmq import LocalRabbitMQ
    from agentqueue.workers.settings import state_dir

    data_dir = args.data_dir or os.path.join(state_dir(), "rabbitmq")
    node = LocalRabbitMQ(data_dir, port=args.port or None)
    print(f"starting RabbitMQ {node.node_name} (data in {node.data_dir})", file=sys.stderr)
    with node:
        # stdout carries only the setting, so `eval "export $(agentqueue local rabbitmq)"`-style
        # scripts and tests can read it; the rest goes to stderr.
        print(f"AGENTQUEUE_BROKER={node.url}", flush=True)
        print("ready; Ctrl-C stops it", file=sys.stderr)
        _wait_for_stop()
    return 0


def _wait_for_stop() -> None:
    """Block until SIGTERM or Ctrl-C."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # a wait with no timeout would not see the signal
            pass
    except KeyboardInterrupt:
        pass


@command("deploy")
def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.deploy.fc_plan import FCOptions, build_plan, render_plan, sandbox_needs

    needs, has_agents = None, True
    if args.action != "destroy":
        app = _load_app(args.app)  # fail here when the app does not import
        needs, has_agents = sandbox_needs(app), bool(app.agents)
    if args.action == "package":
        from agentqueue.deploy.fc_package import build_package

        print(build_package(args.app, args.output, with_deps=not args.no_deps).listing())
        return 0
    env = {}
    for item in args.env:
        name, eq, value = item.partition("=")
        if not eq and name not in os.environ:
            raise ValueError(f"--env {name}: give NAME=VALUE, or set {name} here to copy it")
        env[name] = value if eq else os.environ[name]
    plan = build_plan(
        FCOptions(
            app=args.app,
            settings=settings,
            region=args.region,
            account_id=args.account_id,
            function_name=args.function_name,
            broker=settings.broker,
            memory=args.memory,
            cpu=args.cpu,
            timeout=args.function_timeout,
            role_arn=args.role_arn,
            env=env,
            code=args.code,
            batch_size=args.batch_size,
            batch_window=args.batch_window,
            preload=args.preload,
            sandboxes=needs,
            has_agents=has_agents,
        )
    )
    if args.action == "plan":
        text = json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n"
        print(text if args.json else render_plan(plan), end="")
        return 0
    from agentqueue.deploy.fc_apply import FCDeployer

    if args.action == "apply":
        plan.check_ready()  # before asking for credentials
    deployer = FCDeployer(args.region, fc_endpoint=args.fc_endpoint, mns_endpoint=args.mns_endpoint)
    (deployer.apply if args.action == "apply" else deployer.destroy)(plan)
    return 0


@command("schedule")
def _schedule(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.schedule_admin import schedule_command

    return anyio.run(schedule_command, args, settings, sys.stdout)


@command("schema")
def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from agentqueue.protocol.schema import envelope_schema

    print(json.dumps(envelope_schema(), indent=2))
    return 0


@command("config")
def _config(args: argparse.Namespace, settings: Settings) -> int:
    shown = settings.masked()
    width = max(map(len, shown))
    for key, value in shown.items():
        print(f"{key:{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
