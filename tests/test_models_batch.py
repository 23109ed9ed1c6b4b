"""A 500-item batch through two agent workers against a server that allows LIMIT requests a
second: the shared budget (in Redis) keeps every worker under it, nothing fails, and the
batch's token totals are the server's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentqueue.cli import main
from agentqueue.deploy.local.openai import Attempt, LocalOpenAI
from agentqueue.protocol import new_id
from tests.processes import ROOT, workers

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ITEMS = 500
LIMIT = 25  # requests per WINDOW the server accepts
WINDOW = 1.0
PRICE = (0.5, 1.5)  # USD per million prompt / completion tokens


def most_in_a_window(attempts: list[Attempt]) -> int:
    """The most attempts that arrived within any WINDOW (the server's own sliding count)."""
    times = sorted(a.at for a in attempts)
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - WINDOW:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_rate_limited_batch_never_fails_and_its_tokens_are_the_servers(
    rabbitmq_url: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = f"mb{new_id()[:6]}"
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    summary_file = tmp_path / "summary.json"
    source.write_text(
        "".join(
            json.dumps({"id": f"item-{i}", "prompt": f"question {i} of the batch"}) + "\n"
            for i in range(ITEMS)
        )
    )
    with LocalOpenAI(models=["test-model"], rate_limit=(LIMIT, WINDOW)) as server:
        env = {
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": "",
            "DASHSCOPE_API_KEY": "",
            "AGENTQUEUE_MODEL": "test-model",
            "AGENTQUEUE_RATE_LIMIT": f"requests={LIMIT},window={WINDOW:g}",
            # The budget in Redis, sessions in SQLite: redis-py 8.1 can swallow a cancellation
            # inside a Redis call, and the lease keeper of the Redis session store then never
            # ends (the turn it kept waits for it forever).
            "AGENTQUEUE_RATE_LIMIT_STORE": redis_url,
        }
        args = (
            "--app",
            "tests.apps.models:app",
            "--broker",
            rabbitmq_url,
            "--store",
            f"sqlite:///{tmp_path}/sessions.db",
            "--namespace",
            ns,
            "--partition-count",
            "8",
            "--tool-partition-count",
            "8",
        )
        with workers(args, args, env=env):
            # The batch client runs in a process of its own, so this one only serves HTTP and
            # its arrival times are the server's, not those of a busy event loop.
            batch = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agentqueue.cli",
                    "batch",
                    "run",
                    str(source),
                    "-o",
                    str(output),
                    *args[2:4],
                    *args[6:],
                    "--retries",
                    "0",
                    "--progress",
                    "lines",
                    "--price",
                    f"test-model={PRICE[0]}/{PRICE[1]}",
                    "--summary-json",
                    str(summary_file),
                ],
                cwd=ROOT,
                stderr=subprocess.PIPE,
                text=True,
                timeout=240,
            )
        assert batch.returncode == 0, batch.stderr[-3000:]
        summary = json.loads(summary_file.read_text())
        attempts = server.attempts()
    accepted = [a for a in attempts if a.status == 200]
    refused = [a for a in attempts if a.status != 200]
    with capsys.disabled():
        print(
            f"\n{ITEMS} items in {summary['elapsed_s']:.1f} s; {len(attempts)} attempts,"
            f" {len(refused)} refused; most attempts in a window {most_in_a_window(attempts)}"
        )
    assert summary["counts"]["final"] == ITEMS and summary["missing"] == 0
    assert len(accepted) == ITEMS
    # The shared budget kept every attempt, refused ones included, within the server's limit:
    # so the server never had to refuse one.
    assert most_in_a_window(attempts) <= LIMIT
    assert refused == []
    prompt = sum(a.prompt_tokens for a in accepted)
    completion = sum(a.completion_tokens for a in accepted)
    tokens = summary["tokens"]
    assert (tokens["calls"], tokens["prompt"], tokens["completion"]) == (ITEMS, prompt, completion)
    assert tokens["cost_usd"] == round((prompt * PRICE[0] + completion * PRICE[1]) / 1e6, 6)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert sum(line["usage"]["prompt_tokens"] for line in lines) == prompt
    capsys.readouterr()
    usage = ["usage", "--store", redis_url, "--namespace", ns, "--window", "3600", "--json"]
    code = main(usage)
    assert code == 0
    [counted] = json.loads(capsys.readouterr().out)
    assert counted == {
        "provider": "openai",
        "model": "test-model",
        "calls": ITEMS,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
