"""The agentqueue app the benchmark's tool workers serve: an echo tool and an ordering probe."""

from __future__ import annotations

import time

from agentqueue import App

app = App("bench")


@app.tool("echo", idempotent=True)
async def echo(text: str) -> str:
    """Return the text unchanged.

    Args:
        text: Any text.
    """
    return text


@app.tool("stamp", idempotent=True)
async def stamp(seq: int) -> str:
    """Return when this event started running here (a clock all local processes share).

    Args:
        seq: The event's position in its session.
    """
    return str(time.monotonic_ns())
