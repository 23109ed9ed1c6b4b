"""The reduced chaos runs: workers SIGKILLed, the broker restarted, the client cut; nothing lost.

`benchmarks/chaos.py --reduced` starts its own RabbitMQ node and worker processes, sends 1,000
requests over 50 sessions, SIGKILLs one worker, cuts the client's connection once and restarts
the broker once, then checks three records against each other (see benchmarks/chaos_report.py).
With `--cloud` it does the same through a local MNS server and the FC emulator, SIGKILLing an
FC instance and restarting the MNS server.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentqueue.deploy.local.rabbitmq import RABBITMQ_BIN_DIR
from tests.conftest import server_unavailable

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(400)]


def table_value(table: str, measure: str) -> int:
    """The number in the table row whose measure starts with `measure`."""
    match = re.search(rf"^\| (?:\*\*)?{re.escape(measure)}[^|]*\| (\d+) \|$", table, re.MULTILINE)
    assert match, f"no row {measure!r} in:\n{table}"
    return int(match.group(1))


def run_reduced(tmp_path: Path, *extra: str) -> str:
    """Run `chaos.py --reduced` and return the table it printed (it must have passed)."""
    out = tmp_path / "chaos.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chaos.py"), "--reduced", "--out", str(out),
         *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
    )  # fmt: skip
    table = done.stdout
    assert done.returncode == 0, f"{table}\n{done.stderr[-4000:]}"
    assert table_value(table, "requests sent") == 1000
    assert table_value(table, "lost") == 0
    assert table_value(table, "duplicate effects") == 0
    assert table_value(table, "order violations") == 0
    assert table_value(table, "final answers without an effect") == 0
    assert table_value(table, "final answers that report a failed tool call") == 0
    assert "broker restarts: 1 " in table
    assert "client connection cuts: 1 " in table
    assert out.read_text().count("\n## ") == 1  # the table went to --out
    return table


@pytest.mark.broker
def test_the_reduced_chaos_run_loses_nothing_applies_nothing_twice_and_keeps_session_order(
    tmp_path: Path,
) -> None:
    if not (RABBITMQ_BIN_DIR / "rabbitmq-server").exists():
        server_unavailable(f"RabbitMQ is not installed ({RABBITMQ_BIN_DIR}); run scripts/setup.sh")
    table = run_reduced(tmp_path)
    assert "## single node (reduced)" in table
    assert "1 worker SIGKILLs" in table


def test_the_reduced_chaos_run_on_mns_and_fc_loses_nothing_with_an_instance_killed(
    tmp_path: Path,
) -> None:
    table = run_reduced(tmp_path, "--cloud")
    assert "## cloud path: local MNS + FC emulator (reduced)" in table
    assert "1 worker SIGKILLs" in table
