"""An app for the Function Compute tests: tools that log their effects, crash once, or always."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from agentqueue import App

app = App("fc-tools")


def _log(line: str) -> None:
    # One O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(os.environ["AGENTQUEUE_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.tool("record", timeout=30)
def record(session: str, seq: int) -> str:
    """Log that step `seq` of `session` ran (test helper)."""
    _log(f"{session} {seq} {os.getpid()}")
    return f"{session}:{seq}"


@app.tool("crash_once", timeout=30)
def crash_once(session: str, seq: int) -> str:
    """Kill this process the first time, log the step the next (test helper)."""
    marker = Path(os.environ["AGENTQUEUE_TEST_LOG"] + f".{session}.{seq}.crashed")
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return record(session, seq)


@app.tool("poison", timeout=30)
def poison() -> str:
    """Kill this process, every time (test helper)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@app.tool("ping", timeout=30, idempotent=True)
def ping(n: int) -> str:
    """Answer `n` back; safe to run twice, so its calls are not recorded (test helper)."""
    return f"pong {n}"
