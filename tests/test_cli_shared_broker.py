"""Commands that talk to workers in other processes refuse memory://, naming the choices."""

from __future__ import annotations

import pytest

from agentqueue.cli import main

CHOICES = (
    " needs a broker that workers share: pass --broker amqp://… or mns://… (or set"
    " AGENTQUEUE_BROKER); memory:// exists only inside one process (`agentqueue demo` runs an"
    " embedded broker and its workers in one process)\n"
)


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["worker", "--app", "tests.apps.fc_tools:app", "--store", "memory://"], "worker"),
        (["call", "hello"], "call"),
        (["cancel", "req-1", "--session", "s1"], "cancel"),
        (["status"], "status"),
        (["dlq", "list"], "dlq list"),
    ],
)
def test_a_command_that_needs_a_shared_broker_refuses_memory_naming_the_choices(
    argv: list[str], what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--broker", "memory://"]) == 1
    assert capsys.readouterr().err == f"agentqueue {argv[0]}: {what}{CHOICES}"
