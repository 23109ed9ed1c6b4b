"""A 2,000-item batch over RabbitMQ whose client is SIGKILLed half way and run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agentqueue.protocol import new_id
from tests.processes import ROOT, workers

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ITEMS = 2000


def batch_command(url: str, ns: str, source: Path, output: Path, summary: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentqueue.cli",
        "batch",
        "run",
        str(source),
        "-o",
        str(output),
        "--broker",
        url,
        "--namespace",
        ns,
        "--partition-count",
        "8",
        "--tool-partition-count",
        "8",
        "--progress",
        "lines",
        "--summary-json",
        str(summary),
    ]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_a_batch_killed_half_way_resumes_to_exactly_one_line_per_item(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"br{new_id()[:6]}"
    source, output, summary = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "sum.json"
    source.write_text(
        "".join(json.dumps({"id": f"item-{i}", "prompt": f"hi {i}"}) + "\n" for i in range(ITEMS))
    )
    store = f"sqlite:///{tmp_path}/sessions.db"
    args = (
        "--app",
        "examples.weather:app",
        "--broker",
        rabbitmq_url,
        "--store",
        store,
        "--namespace",
        ns,
        "--partition-count",
        "8",
        "--tool-partition-count",
        "8",
        "--role",
        "all",
    )
    command = batch_command(rabbitmq_url, ns, source, output, summary)
    with workers(args, args):
        first = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while count_lines(output) < ITEMS // 2:
                assert first.poll() is None, "the first run ended before it was killed"
                assert time.monotonic() < deadline, f"only {count_lines(output)} results"
                time.sleep(0.02)
            os.killpg(first.pid, signal.SIGKILL)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        written_before = count_lines(output)
        second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert len(ids) == ITEMS
    assert set(ids) == {f"item-{i}" for i in range(ITEMS)}
    assert not [i for i, n in Counter(ids).items() if n > 1]
    report = json.loads(summary.read_text())
    assert sum(report["counts"].values()) == report["total"] == ITEMS
    assert report["counts"]["final"] == ITEMS and report["missing"] == 0
    assert report["written_now"] == ITEMS - written_before
    assert ITEMS // 2 <= written_before < ITEMS
    assert "final" in second.stdout and "p95" in second.stdout  # the table was printed
