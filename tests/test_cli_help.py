"""Every option of every command says what it does and what it defaults to."""

from __future__ import annotations

import argparse

import pytest

from agentqueue.cli import build_parser, main
from agentqueue.cli.options import parsers

SKIP = (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)


def test_every_option_of_every_command_has_help_and_shows_its_default() -> None:
    missing: list[str] = []
    for parser in parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, SKIP):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(f"{name}: no help")
                continue
            takes_value = action.nargs != 0 and action.option_strings and not action.required
            if takes_value and "default" not in (formatter._get_help_string(action) or ""):
                missing.append(f"{name}: no default shown")
    assert missing == []


def test_the_default_is_printed_in_the_help_of_an_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["worker", "--help"])
    assert exit.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "serve agent requests, tool calls, or both (default: all)" in out
    assert "events run at once (AGENTQUEUE_CONCURRENCY, default 32)" in out


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"agentqueue {version('agentqueue')}\n"


def test_global_flags_are_accepted_after_the_subcommand() -> None:
    args = build_parser().parse_args(
        ["config", "--broker", "amqp://h/", "--namespace", "ns", "-vv"]
    )
    assert (args.broker, args.namespace, args.verbose) == ("amqp://h/", "ns", 2)
    assert build_parser().parse_args(["-v", "config"]).verbose == 1
