"""`agentqueue call` names its request, and Ctrl-C cancels it instead of abandoning it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.processes import ROOT, workers

pytestmark = pytest.mark.broker

APP = ("--app", "tests.apps.steps:app", "--no-balance", "--store", "memory://")


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agentqueue.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_on_call_cancels_the_request_and_exits_130(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "AGENTQUEUE_TEST_LOG": str(tmp_path / "steps.log")}
    broker = ("--broker", rabbitmq_url, "--namespace", "callcancel")
    slow = json.dumps({"session": "s", "seq": 1, "pause": 25})
    with workers((*broker, *APP), env=env):
        call = cli("call", f"/tool step {slow}", "--session", "s1", *broker, env=env)
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(line.rstrip() for line in call.stderr),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        deadline = time.monotonic() + 60
        while not lines and time.monotonic() < deadline and call.poll() is None:
            time.sleep(0.05)
        assert lines and lines[0].startswith("request "), lines
        request_id = lines[0].split()[1]
        assert lines[0] == f"request {request_id} session s1"
        call.send_signal(signal.SIGINT)
        assert call.wait(30) == 130
        reader.join(10)
        assert call.stdout is not None and call.stdout.read() == ""
        assert lines[-1] == f"cancel sent for {request_id}"
        # The cancelled turn no longer holds the session: the next one answers before the
        # cancelled tool step (25 s) would have ended.
        after = cli("call", "hello", "--session", "s1", "--timeout", "15", *broker, env=env)
        out, err = after.communicate(timeout=60)
        assert after.returncode == 0, err
        assert out.strip() != ""
        assert err.startswith("request ")


def test_call_keeps_stdout_for_the_answer_and_names_the_request_on_stderr(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "AGENTQUEUE_TEST_LOG": str(tmp_path / "steps.log")}
    broker = ("--broker", rabbitmq_url, "--namespace", "callstream")
    with workers((*broker, *APP), env=env):
        for extra in ((), ("--stream",)):
            call = cli("call", "hello", "--session", "s2", *extra, *broker, env=env)
            out, err = call.communicate(timeout=60)
            assert call.returncode == 0, err
            assert out.strip() != "" and "request " not in out
            request_id = err.split()[1]
            assert err == f"request {request_id} session s2\n"
