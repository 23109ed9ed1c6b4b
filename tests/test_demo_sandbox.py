"""`agentqueue demo --sandbox`: the data-analyst example, offline, in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import ROOT
from tests.workers.test_sandbox import bwrap

__all__ = ["bwrap"]  # the fixture that fails (under CI) when bubblewrap is missing


def test_the_sandbox_demo_answers_turn_two_from_the_variables_of_turn_one(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTQUEUE_SANDBOX_ROOT": str(tmp_path), "OTEL_SDK_DISABLED": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "agentqueue.cli", "demo", "--sandbox"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    answers = [line.rsplit("    (", 1)[0] for line in lines if line.startswith("  agent  › ")]
    assert answers == [
        "  agent  › Tool run_ipython_cell returned: 3 rows loaded.",
        "  agent  › Tool run_ipython_cell returned: 170.",  # `rows` is turn 1's variable
    ]
    assert lines[-1] == "demo: 1 sessions, 2 turns, 2 replies, 0 lost"
    # The session was ended and the pool closed: no workspace is left behind.
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".pool"]
