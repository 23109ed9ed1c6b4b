"""`agentqueue ingress http`: accept agent requests over HTTP (JSON, CloudEvents)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import anyio

from agentqueue.cli.options import settings_options, trace_option
from agentqueue.cli.running import require_shared_broker, telemetry
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `ingress http`."""
    p = commands.add_parser("ingress", help="accept agent requests over HTTP (JSON, CloudEvents)")
    kinds = p.add_subparsers(dest="ingress_command", required=True, metavar="KIND")
    i = kinds.add_parser("http", help="POST /v1/requests, GET /v1/requests/{id}[/events]")
    settings_options(i)
    trace_option(i)
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
    i.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the ingress until stopped."""
    from agentqueue.ingress.app import serve_ingress
    from agentqueue.ingress.auth import WebhookKeys
    from agentqueue.ingress.server import Limits

    require_shared_broker(settings, "ingress http")
    key = args.signing_key or settings.ingress_key
    if key and key.startswith("@"):
        with open(key[1:]) as f:
            key = f.read().strip()
    keys = WebhookKeys.parse(key) if key else None
    limits = Limits(args.header_timeout, args.body_timeout, args.max_connections)
    with telemetry(settings, "agentqueue-ingress"):
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
