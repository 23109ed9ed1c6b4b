"""An app for tests against the local OpenAI-compatible server: a remote tool and two agents."""

from __future__ import annotations

import os

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext

app = App("models")


@app.tool("get_weather", timeout=10)
async def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name.
    """
    return f"sunny, 21°C in {city} (tool worker {os.getpid()})"


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You are helpful.", tools=["get_weather"])


@app.agent("stranger")
def stranger(ctx: AgentContext):  # type: ignore[no-untyped-def]
    """Asks the configured provider for a model it does not serve."""
    return ctx.build_agent("You are helpful.", model="no-such-model")
