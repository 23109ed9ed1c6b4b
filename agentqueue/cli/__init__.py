"""The `agentqueue` command line: a module per command, its options declared beside its handler."""

from agentqueue.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
