"""One settings object: every `AGENTQUEUE_*` setting reaches a local worker, the FC handler and
the function environment `deploy fc --plan` writes, with one set of defaults."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.memory import MemoryBroker
from agentqueue.cli import main
from agentqueue.protocol import new_id
from agentqueue.settings import Settings
from agentqueue.workers.app import load_app
from agentqueue.workers.fc import FCInstance
from agentqueue.workers.fc_config import FCConfig
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker

ENV = {
    "AGENTQUEUE_NAMESPACE": "cfg",
    "AGENTQUEUE_PARTITIONS": "3",
    "AGENTQUEUE_TOOL_PARTITIONS": "2",
    "AGENTQUEUE_CONCURRENCY": "9",
    "AGENTQUEUE_MAX_ATTEMPTS": "5",
    "AGENTQUEUE_DELIVERY_LIMIT": "7",
    "AGENTQUEUE_LEASE_TTL": "12.5",
    "AGENTQUEUE_STORE_RETENTION": "3600",
    "AGENTQUEUE_SESSION_TTL": "86400",
    "AGENTQUEUE_STORE": "redis://r-agentqueue.example:6379/0",
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


async def test_every_setting_reaches_a_local_worker(environment: dict[str, str]) -> None:
    settings = Settings.load(
        broker=f"memory://cfg-{new_id()[:8]}", store=f"memory://cfg-{new_id()[:8]}", balance=False
    )
    app = load_app("tests.apps.fc_tools:app")
    async with MemoryBroker(settings.broker) as broker, anyio.create_task_group() as tg:
        store = settings.open_store()
        assert (store.retention, store.session_ttl) == (3600, 86400)  # type: ignore[attr-defined]
        worker = Worker(app, broker, store, settings)  # as `agentqueue worker` makes it
        await tg.start(worker.run)
        pipeline = worker.pipeline
        assert pipeline is not None
        assert (pipeline.delivery_limit, pipeline.retry.max_attempts, pipeline.lease_ttl) == (
            7,
            5,
            12.5,
        )
        assert worker.concurrency == 9
        assert worker.owned == [
            "cfg-requests-0",
            "cfg-requests-1",
            "cfg-requests-2",
            "cfg-tools-0",
            "cfg-tools-1",
        ]
        worker.stop()


def test_every_setting_reaches_the_fc_handler(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTQUEUE_APP", "tests.apps.fc_tools:app")
    monkeypatch.setenv("AGENTQUEUE_BROKER", f"memory://cfg-{new_id()[:8]}")
    monkeypatch.setenv("AGENTQUEUE_STORE", f"sqlite:///{tmp_path}/s.db")
    instance = FCInstance(FCConfig.from_env())
    pipeline = instance.pipeline
    assert (pipeline.delivery_limit, pipeline.retry.max_attempts, pipeline.lease_ttl) == (
        7,
        5,
        12.5,
    )
    assert instance.config.settings.concurrency == 9
    assert (instance.store.retention, instance.store.session_ttl) == (3600, 86400)  # type: ignore[attr-defined]
    assert instance.topology.queues("requests") == [
        "cfg-requests-0",
        "cfg-requests-1",
        "cfg-requests-2",
    ]


def test_deploy_fc_plan_gives_the_function_every_setting(
    environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "deploy",
            "fc",
            "--app",
            "tests.apps.fc_tools:app",
            "--account-id",
            "1234567890123456",
            "--plan",
            "--json",
        ]
    )
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    env = plan["function"]["environmentVariables"]
    for name, value in ENV.items():
        assert env[name] == value, name
    # What the function reads back is what the workers here run with.
    function_settings = FCConfig.from_env(env).settings
    here = Settings.load(broker=env["AGENTQUEUE_BROKER"], app=env["AGENTQUEUE_APP"])
    assert function_settings == here


def test_the_defaults_are_one_set_for_workers_and_functions() -> None:
    here = Settings.load({})
    there = FCConfig.from_env(
        {"AGENTQUEUE_APP": "a:b", "AGENTQUEUE_BROKER": "mns://x", "AGENTQUEUE_STORE": "redis://r/0"}
    ).settings
    assert (here.delivery_limit, here.max_attempts, here.lease_ttl, here.concurrency) == (
        there.delivery_limit,
        there.max_attempts,
        there.lease_ttl,
        there.concurrency,
    )
    assert here.topology.delivery_limit == here.delivery_limit == 20


async def test_a_client_with_no_arguments_takes_the_settings_a_worker_takes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTQUEUE_TEST_LOG", str(tmp_path / "effects.log"))
    monkeypatch.setenv("AGENTQUEUE_BROKER", f"memory://cfg-{new_id()[:8]}")
    monkeypatch.setenv("AGENTQUEUE_NAMESPACE", "own-app")
    monkeypatch.setenv("AGENTQUEUE_PARTITIONS", "4")
    monkeypatch.setenv("AGENTQUEUE_BALANCE", "false")
    app = load_app("tests.apps.fc_tools:app")
    async with Client() as client, anyio.create_task_group() as tg:
        store = MemorySessionStore(f"memory://cfg-{new_id()[:8]}")
        worker = Worker(app, client.broker, store)  # type: ignore[arg-type]
        await tg.start(worker.run)
        assert client.topology == worker.topology
        assert client.topology.queues("requests")[-1] == "own-app-requests-3"
        assert worker.settings.balance is False
        answer = await client.call_tool("record", {"session": "s", "seq": 1}, timeout=10)
        worker.stop()
    assert answer == "s:1"


def test_a_setting_that_is_not_a_boolean_is_refused_naming_it() -> None:
    with pytest.raises(ValueError) as caught:
        Settings.load({"AGENTQUEUE_BALANCE": "sometimes"})
    assert str(caught.value) == (
        "setting balance (AGENTQUEUE_BALANCE) must be true or false, got 'sometimes'"
    )


def test_every_agentqueue_variable_the_code_names_is_a_setting_read_in_one_place() -> None:
    import dataclasses
    import re

    root = Path(__file__).resolve().parents[1]
    fields = {f"AGENTQUEUE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    # The FC emulator's and the local servers' own process plumbing, not user settings.
    plumbing = re.compile(r"AGENTQUEUE_(FC_[A-Z_]+|LOCAL_SERVER(_OWNER)?)$")
    named, readers = set(), []
    for folder in ("agentqueue", "workers", "broker", "protocol", "deploy"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            named |= set(re.findall(r"AGENTQUEUE_[A-Z_]+", text))
            reads = re.search(
                r"""(environ(\.get\(|\[)|getenv\()\s*f?["']AGENTQUEUE_(?!FC_|LOCAL_)""", text
            )
            if path.name != "settings.py" and reads:
                readers.append(path.name)
    assert sorted(n for n in named if n not in fields and not plumbing.match(n)) == []
    assert readers == []  # nothing reads a setting from the environment but Settings
