"""Session-wide fixtures: private RabbitMQ and Redis servers started by the suite itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.deploy.local.process import ServerNotInstalledError
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.deploy.local.redis import LocalRedis

# Fixtures that start a RabbitMQ or Redis server: a test using one carries the `broker` marker,
# so that `pytest -m "not broker"` runs where neither is installed.
SERVER_FIXTURES = frozenset({"rabbitmq", "redis_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the run if a test needs a server fixture but lacks the broker marker."""
    unmarked = [
        item.nodeid
        for item in items
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("broker") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a RabbitMQ or Redis but lack the broker marker; add"
            " `pytestmark = pytest.mark.broker` (or @pytest.mark.broker on the test):\n  "
            + "\n  ".join(unmarked)
        )


def server_unavailable(reason: str) -> NoReturn:
    """Skip for a server this machine lacks; in CI (CI=true) fail, since CI must have it."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true, so a missing server is an error)", pytrace=False)
    pytest.skip(reason)


def start_or_skip(server: LocalRabbitMQ | LocalRedis) -> None:
    """Start server, or skip (fail in CI) when its program is not installed."""
    try:
        server.start()
    except ServerNotInstalledError as exc:
        missing = str(exc)
    else:
        return
    # Outside the except block, so the report shows the reason and not a chained traceback.
    server_unavailable(missing)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    """A private RabbitMQ node on 127.0.0.1 shared by the whole session."""
    node = LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    start_or_skip(node)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq: LocalRabbitMQ) -> str:
    """AMQP URL of the session's RabbitMQ node."""
    return rabbitmq.url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A private Redis server on 127.0.0.1 shared by the whole session."""
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    start_or_skip(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: LocalRedis) -> str:
    """URL of database 0 on the session's Redis server."""
    return redis_server.url


@pytest.fixture(scope="session")
def local_mns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMNS]:
    """A local MNS-compatible server on 127.0.0.1, with its credentials in the environment."""
    server = LocalMNS(tmp_path_factory.mktemp("mns") / "mns.db")
    with pytest.MonkeyPatch.context() as env, server:
        env.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", server.access_id)
        env.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", server.access_key)
        yield server


@pytest.fixture(scope="session")
def mns_url(local_mns: LocalMNS) -> str:
    """mns:// URL of the session's local MNS server (1 s long polls, so consumers close fast)."""
    return f"mns://{local_mns.host}:{local_mns.port}?wait=1"
