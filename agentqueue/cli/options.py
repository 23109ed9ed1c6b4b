"""The options several commands share, and the help format every command uses."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from agentqueue.settings import Settings

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_APP = "examples.weather:app"


class Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ([], "")
        shown = not empty and action.default is not argparse.SUPPRESS
        if shown and "default" not in text and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


def settings_options(p: argparse.ArgumentParser) -> None:
    """--broker, --store, --namespace, the partition counts and --timeout (and -v after it)."""
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
    verbose_option(p, argparse.SUPPRESS)


def verbose_option(p: argparse.ArgumentParser, default: Any) -> None:
    """-v/--verbose, counted."""
    # Also after the subcommand (`agentqueue worker -v`), like every other global flag.
    p.add_argument(
        "-v", "--verbose", action="count", default=default, help="more logging (-vv for debug)"
    )


def trace_option(p: argparse.ArgumentParser) -> None:
    """--trace-file."""
    p.add_argument(
        "--trace-file",
        dest="trace_file",
        metavar="FILE",
        help="append spans as JSON lines to FILE (AGENTQUEUE_TRACE_FILE);"
        " OTEL_* variables add exporters (default: none)",
    )


def metrics_options(p: argparse.ArgumentParser, what: str) -> None:
    """--metrics-port and --metrics-host, serving the metrics of `what`."""
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


def app_option(p: argparse.ArgumentParser) -> None:
    """--app, defaulting to the weather example."""
    p.add_argument("--app", default=DEFAULT_APP, help="module:attribute of the App")


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)
