"""An app for process-level tests: a tool that logs each step it runs to a shared file."""

from __future__ import annotations

import os

import anyio

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext

app = App("steps")


@app.tool("step", timeout=30)
async def step(session: str, seq: int, pause: float = 0.02) -> str:
    """Record one step of a session (test helper)."""
    await anyio.sleep(pause)
    line = f"{session} {seq} {os.getpid()}\n"
    # One O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(os.environ["AGENTQUEUE_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return f"{session}:{seq}:{os.getpid()}"


@app.tool("whoami", timeout=10)
async def whoami() -> str:
    """The process id of the tool worker (test helper)."""
    return str(os.getpid())


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You are helpful.")
