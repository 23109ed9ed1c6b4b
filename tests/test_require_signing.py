"""A worker without signing keys says so once at start; --require-signing refuses to start."""

from __future__ import annotations

import pytest

from agentqueue.cli import main
from tests.processes import WorkerProcess

pytestmark = pytest.mark.broker

ARGS = (
    "--app",
    "tests.apps.fc_tools:app",
    "--store",
    "memory://",
    "--role",
    "tools",
    "--no-balance",
)
KEYS = "k2:current-secret-0123456789,k1:previous-secret-0123456789"


def test_require_signing_without_keys_refuses_to_start_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rabbitmq_url: str
) -> None:
    monkeypatch.delenv("AGENTQUEUE_SIGNING_KEYS", raising=False)
    assert main(["worker", "--require-signing", "--broker", rabbitmq_url, *ARGS]) == 2
    assert capsys.readouterr().err == (
        "agentqueue worker: this worker must verify signed envelopes (--require-signing) but no"
        " signing keys are set: set AGENTQUEUE_SIGNING_KEYS=id:secret (the same value on every"
        " client and worker), or @/path/to/a/file holding it\n"
    )


def run_until_serving(
    monkeypatch: pytest.MonkeyPatch, broker: str, *args: str, keys: str | None
) -> list[str]:
    if keys is None:
        monkeypatch.delenv("AGENTQUEUE_SIGNING_KEYS", raising=False)
    else:
        monkeypatch.setenv("AGENTQUEUE_SIGNING_KEYS", keys)
    worker = WorkerProcess(*args, "--broker", broker, "--namespace", "signing", *ARGS)
    try:
        worker.wait_serving()
        assert worker.terminate() == 0
    finally:
        worker.kill()
    return worker.lines


def test_a_worker_without_keys_warns_once_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, rabbitmq_url: str
) -> None:
    lines = run_until_serving(monkeypatch, rabbitmq_url, keys=None)
    warnings = [line for line in lines if "AGENTQUEUE_SIGNING_KEYS" in line]
    assert len(warnings) == 1, lines
    assert (
        " WARNING agentqueue.worker: no signing keys (AGENTQUEUE_SIGNING_KEYS is not set):"
        in (warnings[0])
    )
    assert "this worker runs unsigned envelopes" in warnings[0]


def test_a_worker_with_keys_and_require_signing_starts_without_the_warning(
    monkeypatch: pytest.MonkeyPatch, rabbitmq_url: str
) -> None:
    lines = run_until_serving(monkeypatch, rabbitmq_url, "--require-signing", keys=KEYS)
    assert not [line for line in lines if "unsigned" in line], lines
    assert not [line for line in lines if "current-secret" in line]  # the secret never shows
