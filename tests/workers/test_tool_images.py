"""Images a remote tool returns reach the model as AgentScope data blocks."""

from __future__ import annotations

import base64
from typing import Any

from agentscope.message import DataBlock, TextBlock, ToolCallBlock
from agentscope.state import AgentState
from agentscope.tool import ToolResponse

from agentqueue.protocol import Image
from agentqueue.workers.toolkit import ToolOutput, ToolSpec, build_toolkit

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def computer_use(action: str) -> str:
    """Use the desktop.

    Args:
        action: What to do.
    """
    raise AssertionError("runs on a tool worker")


async def test_an_inline_screenshot_is_a_data_block_and_a_stored_one_is_named_by_reference() -> (
    None
):
    images = [
        Image(media_type="image/png", width=4, height=2, size=len(PNG), data=PNG),
        Image(media_type="image/png", width=1024, height=768, size=90_000, ref="artifact:s/1.png"),
    ]

    async def invoke(name: str, arguments: dict[str, Any], timeout: float | None) -> ToolOutput:
        return ToolOutput("Screenshot taken", images)

    toolkit = build_toolkit([ToolSpec("computer_use", computer_use, remote=True)], invoke)
    call = ToolCallBlock(id="c1", name="computer_use", input='{"action": "screenshot"}')
    chunks = [chunk async for chunk in toolkit.call_tool(call, AgentState())]
    (response,) = [c for c in chunks if isinstance(c, ToolResponse)]
    text, image, stored = response.content
    assert isinstance(text, TextBlock) and text.text == "Screenshot taken"
    assert isinstance(image, DataBlock) and image.source.media_type == "image/png"
    assert base64.b64decode(image.source.data) == PNG
    assert isinstance(stored, TextBlock)
    assert stored.text == "[image/png 1024x768, 90000 bytes, stored as artifact artifact:s/1.png]"
