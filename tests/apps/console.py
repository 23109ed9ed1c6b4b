"""An app for the console's tests: a helpful agent, and one that is broken while a file exists."""

from __future__ import annotations

import os

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.errors import PermanentError

app = App("console")


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You are helpful.")


@app.agent("fragile")
def fragile(ctx: AgentContext):  # type: ignore[no-untyped-def]
    if os.path.exists(os.environ["CONSOLE_TEST_BROKEN"]):
        raise PermanentError("the fragile agent is broken while its marker file exists")
    return ctx.build_agent("You are helpful.")
