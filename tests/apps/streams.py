"""An app for the attach tests: agents whose streams hold at a gate, and one whose first attempt
breaks mid-stream.

`gated` streams its answer word by word and, after `HOLD_AFTER` words, waits until the file
named by AGENTQUEUE_TEST_GATE exists (no gate set: it does not wait), so a test decides when
the rest of the stream comes. `flaky` breaks its first attempt at each prompt after
`HOLD_AFTER` words (a transient error: the worker runs it again), then streams like `gated`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from agentscope.model import ChatResponse

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.scripted_model import ScriptedChatModel

app = App("streams")
HOLD_AFTER = 3
_broken: set[str] = set()  # prompts whose first attempt already broke, in this process


class GatedModel(ScriptedChatModel):
    """The scripted model, holding its stream at the test's gate after `HOLD_AFTER` words."""

    def __init__(self, *, break_first: bool = False) -> None:
        super().__init__()
        self.break_first = break_first
        self._prompt = ""

    async def _call_api(self, model_name: str, messages: list[Any], *args: Any, **kw: Any) -> Any:
        self._prompt = messages[-1].get_text_content() or "" if messages else ""
        return await super()._call_api(model_name, messages, *args, **kw)

    async def _stream(self, pieces: list[ChatResponse]) -> AsyncGenerator[ChatResponse, None]:
        breaks = self.break_first and self._prompt not in _broken
        for n, piece in enumerate(pieces):
            if n == HOLD_AFTER:
                if breaks:
                    _broken.add(self._prompt)
                    raise ConnectionResetError("the model's stream broke (test)")
                await _gate()
            yield piece


async def _gate() -> None:
    gate = os.environ.get("AGENTQUEUE_TEST_GATE")
    while gate and not await anyio.Path(gate).exists():
        await anyio.sleep(0.02)


@app.agent("gated")
def gated(ctx: AgentContext):  # type: ignore[no-untyped-def]
    ctx.model_factory = GatedModel
    return ctx.build_agent("You repeat what you are told.")


@app.agent("flaky")
def flaky(ctx: AgentContext):  # type: ignore[no-untyped-def]
    ctx.model_factory = lambda: GatedModel(break_first=True)
    return ctx.build_agent("You repeat what you are told.")
