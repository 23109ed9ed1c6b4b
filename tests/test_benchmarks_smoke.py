"""`benchmarks/run.py --smoke` runs end to end and writes results of the documented shape.

Only the shape is checked, never a timing: the numbers belong to the full benchmark run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
def amqp_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The suite's RabbitMQ when the suite provides one, else a private node for this test."""
    try:
        yield request.getfixturevalue("rabbitmq_broker_url")
        return
    except pytest.FixtureLookupError:
        pass
    from agentqueue.deploy.local.process import ServerNotInstalledError
    from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ

    try:
        node = LocalRabbitMQ(tmp_path_factory.mktemp("bench-rabbitmq")).start()
    except ServerNotInstalledError as exc:
        pytest.skip(str(exc))
    try:
        yield node.url
    finally:
        node.stop()


def test_smoke_run_writes_results_for_raw_aio_pika_and_agentqueue(
    amqp_url: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--smoke",
            "--broker",
            amqp_url,
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["mode"] == "smoke"
    assert results["errors"] == {}
    assert set(results["contenders"]) == {"raw", "agentqueue"}
    for contender in results["contenders"].values():
        assert contender["pipelined"]["requests"] == 200
        assert contender["pipelined"]["rps"] > 0
        assert contender["rss_idle_mb"] > 0
    assert set(results["codec"]["codecs"]) == {
        "msgspec (agentqueue.protocol)",
        "pydantic v2 model",
        "stdlib json (dicts, no validation)",
    }
    assert {"cpu_count", "python", "packages"} <= set(results["machine"])

    table = (tmp_path / "latest.md").read_text()
    assert "| raw aio-pika |" in table and "| agentqueue |" in table
    assert table in done.stdout
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
