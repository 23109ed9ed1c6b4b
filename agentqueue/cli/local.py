"""`agentqueue local`: servers for development (RabbitMQ, MNS, an FC emulator, a model)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import app_option, settings_options
from agentqueue.cli.running import load_app, wait_for_stop
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `local rabbitmq`, `mns`, `openai` and `fc`."""
    p = commands.add_parser(
        "local", help="servers for development: RabbitMQ, an MNS server, an FC emulator, a model"
    )
    services = p.add_subparsers(dest="local_command", required=True, metavar="SERVICE")
    r = services.add_parser(
        "rabbitmq", help="run a private RabbitMQ node on 127.0.0.1 until Ctrl-C (prints its URL)"
    )
    r.add_argument("--port", type=int, default=5672, help="AMQP port on 127.0.0.1 (0: any free)")
    r.add_argument(
        "--data-dir",
        dest="data_dir",
        help="the node's data folder, kept across runs (default: rabbitmq/ in the state"
        " folder, beside the default session store)",
    )
    r.set_defaults(run=rabbitmq)
    m = services.add_parser("mns", help="serve an MNS-compatible queue API (state in SQLite)")
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
    m.set_defaults(run=mns)
    o = services.add_parser(
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
    o.set_defaults(run=openai)
    f = services.add_parser("fc", help="emulate FC: MNS triggers, instance processes")
    settings_options(f)
    app_option(f)
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
    f.set_defaults(run=fc)


def rabbitmq(args: argparse.Namespace, settings: Settings) -> int:
    """Run a private RabbitMQ node until Ctrl-C; its URL on stdout."""
    from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
    from agentqueue.workers.settings import state_dir

    data_dir = args.data_dir or os.path.join(state_dir(), "rabbitmq")
    node = LocalRabbitMQ(data_dir, port=args.port or None)
    print(f"starting RabbitMQ {node.node_name} (data in {node.data_dir})", file=sys.stderr)
    with node:
        # stdout carries only the setting, so `eval "export $(agentqueue local rabbitmq)"`-style
        # scripts and tests can read it; the rest goes to stderr.
        print(f"AGENTQUEUE_BROKER={node.url}", flush=True)
        print("ready; Ctrl-C stops it", file=sys.stderr)
        wait_for_stop()
    return 0


def mns(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the MNS-compatible API until stopped."""
    from agentqueue.deploy.local.mns import serve, server_credentials

    credentials = server_credentials(args.host, args.access_key_id, args.access_key_secret)
    os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    print(f"{credentials.describe()}; broker URL mns://{args.host}:{args.port}", file=sys.stderr)
    serve(args.host, args.port, args.db, credentials.access_id, credentials.access_key)
    return 0


def openai(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the echoing chat API until SIGTERM or Ctrl-C."""
    from agentqueue.deploy.local.openai import DEFAULT_MODEL, LocalOpenAI

    names = args.model or [DEFAULT_MODEL]
    limit = (args.rate_limit, 1.0) if args.rate_limit else None
    with LocalOpenAI(host=args.host, port=args.port, models=names, rate_limit=limit) as api:
        print(f"OPENAI_BASE_URL={api.url} AGENTQUEUE_MODEL={names[0]}", file=sys.stderr)
        wait_for_stop()
    return 0


def fc(args: argparse.Namespace, settings: Settings) -> int:
    """Emulate FC's MNS triggers and instances until stopped; print what they did."""
    from agentqueue.deploy.local.fc import TriggerConfig, serve_local_fc

    load_app(args.app)  # fail here, not in every instance, when the app does not import
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
