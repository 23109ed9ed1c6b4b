"""Secrets never show up: not in logs (debug included), spans, dead-letter reasons or config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ

pytestmark = [pytest.mark.slow, pytest.mark.broker]

BROKER_PASSWORD = "Br0ker-pa55-7c1e9a"
SIGNING_SECRET = "sign-secret-4f0b2d9e81"
CLOUD_SECRET = "ali-secret-5d3c8b7a6f"
SECRETS = [BROKER_PASSWORD, SIGNING_SECRET, CLOUD_SECRET]
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentqueue.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_no_secret_appears_in_any_output_of_a_traced_debug_demo(
    rabbitmq: LocalRabbitMQ, tmp_path: Path
) -> None:
    rabbitmq.ctl("add_user", "agentqueue", BROKER_PASSWORD)
    rabbitmq.ctl("set_permissions", "-p", "/", "agentqueue", ".*", ".*", ".*")
    url = rabbitmq.url.replace("guest:guest", f"agentqueue:{BROKER_PASSWORD}")
    env = {
        **os.environ,
        "AGENTQUEUE_SIGNING_KEYS": f"k1:{SIGNING_SECRET}",
        "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI-test-id",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": CLOUD_SECRET,
    }
    trace_file = tmp_path / "spans.jsonl"
    demo = run(
        "-vv",
        "demo",
        "--broker",
        url,
        "--store",
        f"sqlite:///{tmp_path}/s.db",
        "--namespace",
        "secrets",
        "--trace-file",
        str(trace_file),
        env=env,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.splitlines()[-1] == "demo: 3 sessions, 6 turns, 6 replies, 0 lost"
    assert "DEBUG" in demo.stderr  # debug logging really was on
    config = run("config", "--broker", url, env=env)
    dlq = run("dlq", "list", "--broker", url, "--namespace", "secrets", env=env)
    outputs = {
        "demo stdout": demo.stdout,
        "demo stderr": demo.stderr,
        "spans": trace_file.read_text(),
        "config": config.stdout + config.stderr,
        "dlq": dlq.stdout + dlq.stderr,
    }
    assert trace_file.stat().st_size > 0
    shown = dict(line.split(None, 1) for line in config.stdout.splitlines() if line.strip())
    assert "agentqueue:***@" in shown["broker"] and shown["signing_keys"] == "***"
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into {where}"
