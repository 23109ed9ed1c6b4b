"""The default session store is one absolute place, created on first use and named at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentqueue.settings import Settings
from tests.processes import WorkerProcess


def test_the_default_store_is_under_xdg_state_home() -> None:
    settings = Settings.load(environ={"XDG_STATE_HOME": "/srv/state"})
    assert settings.store == "sqlite:////srv/state/agentqueue/sessions.db"


def test_without_xdg_state_home_the_default_store_is_under_the_home_directory() -> None:
    expected = Path.home() / ".local" / "state" / "agentqueue" / "sessions.db"
    assert Settings.load(environ={}).store == f"sqlite:///{expected}"


@pytest.mark.broker
def test_a_worker_creates_the_default_store_and_names_it_at_start(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    state = tmp_path / "state"
    worker = WorkerProcess(
        "--app",
        "tests.apps.fc_tools:app",
        "--broker",
        rabbitmq_url,
        "--namespace",
        "default-store",
        "--role",
        "tools",
        "--no-balance",
        env={"XDG_STATE_HOME": str(state)},
    )
    try:
        worker.wait_serving()
        assert worker.terminate() == 0
    finally:
        worker.kill()
    db = state / "agentqueue" / "sessions.db"
    assert db.is_file()
    named = [line for line in worker.lines if "session store" in line]
    assert len(named) == 1, worker.lines
    assert named[0].endswith(f" INFO agentqueue.worker: session store sqlite:///{db}")
