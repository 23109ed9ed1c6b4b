"""`agentqueue usage`: model calls and tokens per model over the last window, as workers counted
them in the store they share (the usage counters of `agentqueue.workers.rate_limit`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

import anyio

from agentqueue.cli.options import settings_options
from agentqueue.settings import Settings
from agentqueue.workers.rate_limit import USAGE_KEPT, ModelUsage
from agentqueue.workers.rate_limit_stores import open_limit_backend

if TYPE_CHECKING:
    from agentqueue.cli.options import Commands


def register(commands: Commands) -> None:
    """Add `usage`."""
    p = commands.add_parser("usage", help="model calls and tokens per model over the last window")
    settings_options(p)
    p.add_argument("--window", type=float, default=60.0, help="seconds to look back (default 60)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the usage table (or JSON)."""
    rows = anyio.run(read_usage, settings.store, settings.namespace, args.window)
    if args.json:
        print(usage_json(rows))
    else:
        print_usage(rows, settings.namespace, args.window)
    return 0


def usage_store(store_url: str) -> str:
    """Where the workers count usage: AGENTQUEUE_RATE_LIMIT_STORE, else the session store."""
    return (Settings.load().rate_limit_store or "").strip() or store_url


async def read_usage(store_url: str, namespace: str, window: float) -> list[ModelUsage]:
    """Usage per model in `namespace` over the last `window` seconds (at most a day)."""
    if not 0 < window <= USAGE_KEPT:
        raise ValueError(f"--window must be between 0 and {USAGE_KEPT:g} seconds, got {window:g}")
    backend = open_limit_backend(usage_store(store_url))
    try:
        return await backend.usage(namespace, window)
    finally:
        await backend.close()


def print_usage(
    rows: list[ModelUsage], namespace: str, window: float, out: TextIO | None = None
) -> None:
    """A table, one row per model, most tokens first."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model usage in {namespace!r}, last {window:g} s", title_justify="left")
    for column in ("provider", "model", "calls", "prompt", "completion", "total"):
        table.add_column(column, justify="left" if column in ("provider", "model") else "right")
    for row in rows:
        table.add_row(
            row.provider,
            row.model,
            str(row.calls),
            str(row.prompt_tokens),
            str(row.completion_tokens),
            str(row.total_tokens),
        )
    if not rows:
        table.add_row("-", "no model calls", "0", "0", "0", "0")
    Console(file=out or sys.stdout, width=100).print(table)


def usage_json(rows: list[ModelUsage]) -> str:
    """The rows as a JSON list."""
    return json.dumps(
        [
            {
                "provider": r.provider,
                "model": r.model,
                "calls": r.calls,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.total_tokens,
            }
            for r in rows
        ]
    )
