"""The `agentqueue` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from agentqueue.cli import (
    attach,
    batch,
    call,
    console,
    decide,
    demo,
    deploy,
    dlq,
    info,
    ingress,
    local,
    schedule,
    status,
    trace,
    usage,
    worker,
)
from agentqueue.cli.options import Help, parsers, verbose_option
from agentqueue.settings import Settings

# In the order `agentqueue --help` lists them; each adds its parsers and their handlers.
COMMANDS = (
    demo,
    local,
    worker,
    call,
    attach,
    decide,
    status,
    usage,
    dlq,
    trace,
    batch,
    ingress,
    console,
    deploy,
    schedule,
    info,
)


def _version() -> str:
    from agentqueue.workers.membership import package_version

    return package_version()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each leaf's `run` default is its handler."""
    parser = argparse.ArgumentParser(prog="agentqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentqueue {_version()}")
    verbose_option(parser, 0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    for each in parsers(parser):
        each.formatter_class = Help
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
        return args.run(args, settings)
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


if __name__ == "__main__":
    sys.exit(main())
