"""An app for the busy-session tests: an agent slow enough that a second turn meets it running."""

from __future__ import annotations

import os

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.scripted_model import ScriptedChatModel

app = App("busy")
DELAY = float(os.environ.get("AGENTQUEUE_TEST_MODEL_DELAY", "0.3"))  # seconds per streamed word


@app.agent("slow")
def slow(ctx: AgentContext):  # type: ignore[no-untyped-def]
    ctx.model_factory = lambda: ScriptedChatModel(delay=DELAY)
    return ctx.build_agent("You remember what you are told.")
