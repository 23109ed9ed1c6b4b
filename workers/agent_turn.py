"""Run one agent turn: request messages in, streamed text deltas out, state saved.

`run_turn` is the only place the worker drives an AgentScope agent. The agent's
reply stream is consumed by a dedicated task that does nothing but move events
into a queue, so a cancellation always lands inside AgentScope's own code,
which is where AgentScope turns it into an interrupted reply and closes any
running tool call in the agent's memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentqueue.workers.usage import UsageCounter

if TYPE_CHECKING:
    from agentscope.agent import Agent
    from agentscope.message import DataBlock, Msg, TextBlock, ToolCallBlock
    from agentscope.state import AgentState

    from agentqueue.protocol.messages import Usage

logger = logging.getLogger(__name__)

OnDelta = Callable[[str], Awaitable[None]]
"""Receives each piece of answer text as the model produces it."""

_DONE = object()


@dataclass(frozen=True)
class TurnOutcome:
    """What one turn produced.

    `finished_reason` is AgentScope's reason as a plain string: "completed",
    "interrupted", "exceed_max_iters" or "error", or "parked" when the agent
    stopped to wait for a tool confirmation (`asking` names the calls: tools
    registered with `requires_approval`) or an external tool result.

    `text` is the text of the reply's final message: the last model call's
    answer, or AgentScope's interruption message (`ReActConfig.interruption_message`)
    when interrupted. The deltas passed to `on_delta` cover every model call of
    the turn, so they equal `text` only when earlier calls (the ones that chose
    tools) produced no text, as with the scripted model.
    """

    text: str
    finished_reason: str
    state_json: str
    tool_calls: tuple[str, ...]
    usage: Usage | None = None  # tokens of the turn's model calls (None: no model was called)
    asking: tuple[ToolCallBlock, ...] = ()  # calls waiting for a person ("parked" on them)


def load_state(state_json: str) -> AgentState:
    """Parse a saved `AgentState` (the JSON `dump_state` wrote)."""
    from agentscope.state import AgentState
    from pydantic import ValidationError

    try:
        return AgentState.model_validate_json(state_json)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ValueError(
            f"saved agent state is not valid AgentState JSON: {where}: {first['msg']} "
            f"({e.error_count()} error(s), {len(state_json)} chars); "
            "pass the string dump_state() returned"
        ) from e


def dump_state(agent: Agent) -> str:
    """The agent's state (memory, summary, tool context) as JSON."""
    return agent.state.model_dump_json()


async def run_turn(
    agent: Agent,
    input_messages: Sequence[dict[str, Any]],
    on_delta: OnDelta | None = None,
) -> TurnOutcome:
    """Reply to request messages, streaming text to `on_delta`; never raises on cancellation.

    If the task running `run_turn` is cancelled, the agent is interrupted (a running
    tool call is closed with an interrupted result in its memory), and `run_turn`
    returns an outcome with finished_reason="interrupted" and the closed state
    instead of raising CancelledError. The cancellation request stays visible to
    the caller through `asyncio.current_task().cancelling()`. A second cancellation
    while the agent is closing the turn is not absorbed: it raises CancelledError.
    Errors other than cancellation (e.g. the model API failing) propagate; if
    `on_delta` raises, the agent is interrupted first, then the error propagates.
    """
    return await _drive(agent, to_agentscope_messages(input_messages), on_delta)


async def resume_turn(
    agent: Agent,
    event: Any,
    on_delta: OnDelta | None = None,
    on_item: Callable[[Any], None] | None = None,
) -> TurnOutcome:
    """Continue a parked reply with AgentScope's `UserConfirmResultEvent` (or
    `UserInterruptEvent`), as `run_turn` does for messages; `on_item` sees each event of the
    reply while the agent waits for it to return (so it may adjust the agent's memory)."""
    return await _drive(agent, event, on_delta, on_item)


async def _drive(
    agent: Agent,
    inputs: Any,
    on_delta: OnDelta | None,
    on_item: Callable[[Any], None] | None = None,
) -> TurnOutcome:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pump = asyncio.create_task(
        _pump(agent, inputs, queue, on_item), name=f"agent-reply-{agent.name}"
    )
    collector = _Collector()
    try:
        while (item := await queue.get()) is not _DONE:
            collector.add(item)
            delta = _text_delta(item)
            if delta and on_delta is not None:
                await on_delta(delta)
    except asyncio.CancelledError:
        await _stop(agent, pump)
        while not queue.empty():
            item = queue.get_nowait()
            if item is not _DONE:
                collector.add(item)
        collector.interrupted = True
        return collector.outcome(agent)
    except BaseException:
        # on_delta failed: stop the agent too, or it would go on in the background.
        await _stop(agent, pump)
        raise
    await pump  # re-raises what the reply raised, if anything
    return collector.outcome(agent)


async def _stop(agent: Agent, pump: asyncio.Task[None]) -> None:
    """Interrupt the reply and wait until AgentScope has closed the turn in memory."""
    pump.cancel()
    await asyncio.wait({pump})
    if not pump.cancelled() and (error := pump.exception()) is not None:
        logger.warning(
            "agent %s failed while being interrupted: %s: %s",
            agent.name,
            type(error).__name__,
            error,
        )


async def _pump(
    agent: Agent,
    inputs: list[Msg] | Any,
    queue: asyncio.Queue[Any],
    on_item: Callable[[Any], None] | None = None,
) -> None:
    """Move the reply's events into the queue; its only awaits are inside AgentScope."""
    try:
        async for item in agent.reply_stream(inputs, yield_final_msg=True):
            if on_item is not None:
                on_item(item)
            queue.put_nowait(item)
    finally:
        queue.put_nowait(_DONE)


def _text_delta(item: Any) -> str | None:
    """The answer text an event adds, if it is a text delta."""
    from agentscope.event import TextBlockDeltaEvent

    return item.delta if isinstance(item, TextBlockDeltaEvent) else None


class _Collector:
    """Accumulates what a turn's events say about the outcome."""

    def __init__(self) -> None:
        self.final: Msg | None = None
        self.end_reason: str | None = None
        self.tool_calls: list[str] = []
        self.asking: list[ToolCallBlock] = []
        self.interrupted = False
        self.usage = UsageCounter()

    def add(self, item: Any) -> None:
        """Record one event or the final message."""
        from agentscope.event import ReplyEndEvent, RequireUserConfirmEvent, ToolCallStartEvent
        from agentscope.message import Msg

        self.usage.add(item)
        if isinstance(item, RequireUserConfirmEvent):
            self.asking.extend(item.tool_calls)
        elif isinstance(item, Msg):
            self.final = item
        elif isinstance(item, ReplyEndEvent):
            self.end_reason = str(item.finished_reason)
        elif isinstance(item, ToolCallStartEvent):
            self.tool_calls.append(item.tool_call_name)

    def outcome(self, agent: Agent) -> TurnOutcome:
        """The outcome, with the agent's state as it is now."""
        reason = None
        if self.final is not None and self.final.finished_reason is not None:
            reason = str(self.final.finished_reason)
        reason = reason or self.end_reason
        if reason is None and self.interrupted:
            # Cancelled before the reply started: nothing was added to memory.
            # (A reply that finished before the cancellation landed stays "completed".)
            reason = "interrupted"
        text = (self.final.get_text_content(separator="") or "") if self.final else ""
        if reason is None or reason == "parked":
            asking = tuple(self.asking)
        else:
            asking = ()
        return TurnOutcome(
            text=text,
            finished_reason=reason or "parked",
            state_json=dump_state(agent),
            tool_calls=tuple(self.tool_calls),
            usage=self.usage.usage(),
            asking=asking,
        )


def to_agentscope_messages(input_messages: Sequence[dict[str, Any]]) -> list[Msg]:
    """Map AgentScope Runtime request messages (plain dicts) to AgentScope 2 messages."""
    from agentscope.message import AssistantMsg, UserMsg

    if isinstance(input_messages, (str, bytes, dict)):
        raise TypeError(
            f"input_messages must be a list of message dicts, got {type(input_messages).__name__}"
        )
    msgs: list[Msg] = []
    for index, message in enumerate(input_messages):
        if not isinstance(message, dict):
            raise TypeError(
                f"input_messages[{index}] must be a dict, got {type(message).__name__}: "
                f"{message!r:.80}"
            )
        role = message.get("role") or "user"
        kind = message.get("type") or "message"
        blocks = _blocks(message.get("content"))
        if not blocks:
            continue
        if kind != "message" or role not in ("user", "assistant"):
            # AgentScope accepts only user/assistant text and data as input; keep
            # the rest (system notes, tool outputs) as text the model can still read.
            note = _note(f"{role} {kind}", _plain_text(blocks))
            blocks = [note]
            role = "user"
        if role == "assistant":
            msgs.append(AssistantMsg(name="assistant", content=[*blocks]))
        else:
            msgs.append(UserMsg(name=message.get("name") or "user", content=blocks))
    if not msgs:
        raise ValueError(
            f"input_messages has no content to reply to ({len(input_messages)} message(s)); "
            'send at least one like {"role": "user", "content": [{"type": "text", "text": "hi"}]}'
        )
    return msgs


def _blocks(content: Any) -> list[TextBlock | DataBlock]:
    """Content blocks for a Runtime message's content (a string or a list of parts)."""
    from agentscope.message import TextBlock

    if content is None:
        return []
    if isinstance(content, str):
        return [TextBlock(text=content)] if content else []
    if isinstance(content, dict):
        content = [content]
    blocks = []
    for part in content:
        block = _block(part)
        if block is not None:
            blocks.append(block)
    return blocks


def _block(part: Any) -> TextBlock | DataBlock | None:
    """One content part as a block; what AgentScope cannot represent becomes a text note."""
    from agentscope.message import TextBlock

    if isinstance(part, str):
        return TextBlock(text=part) if part else None
    if not isinstance(part, dict):
        return _note("unsupported content", repr(part))
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        return TextBlock(text=text) if text else None
    if kind == "refusal":
        return _note("refusal", str(part.get("refusal") or ""))
    if kind == "data":
        return _note("data", json.dumps(part.get("data"), ensure_ascii=False, default=str))
    if kind in ("image", "image_url"):
        url = part.get("image_url")
        if isinstance(url, dict):  # the OpenAI shape {"image_url": {"url": ...}}
            url = url.get("url")
        return _media(url, None, "image", fallback="image/png")
    if kind == "audio":
        fmt = part.get("format")
        media_type = f"audio/{fmt}" if fmt else None
        return _media(part.get("data"), media_type, "audio", fallback="audio/wav")
    if kind == "file":
        name = part.get("filename")
        media_type = mimetypes.guess_type(name)[0] if name else None
        if part.get("file_url"):
            return _media(part["file_url"], media_type, "file", name=name)
        if part.get("file_data"):
            return _media(part["file_data"], media_type, "file", name=name)
        return _note("file", f"{name or 'unnamed'} (id {part.get('file_id') or 'unknown'})")
    return _note(f"{kind} content", json.dumps(part, ensure_ascii=False, default=str))


def _media(
    ref: Any,
    media_type: str | None,
    label: str,
    *,
    name: str | None = None,
    fallback: str = "application/octet-stream",
) -> TextBlock | DataBlock:
    """A data block from a URL, a data: URI or bare base64; a note if none of those."""
    from agentscope.message import DataBlock, URLSource
    from pydantic import ValidationError

    if not isinstance(ref, str) or not ref:
        return _note(label, f"{name or 'no data'} (empty)")
    if ref.startswith("data:"):
        header, _, data = ref[5:].partition(",")
        media_type = header.split(";")[0] or media_type
        return _base64_block(data, media_type or fallback, label, name)
    if "://" in ref:
        guessed = media_type or mimetypes.guess_type(ref.split("?")[0])[0] or fallback
        try:
            return DataBlock(source=URLSource(url=ref, media_type=guessed), name=name)
        except ValidationError:
            return _note(label, f"unreadable URL {ref!r:.200}")
    return _base64_block(ref, media_type or fallback, label, name)


def _base64_block(
    data: str, media_type: str, label: str, name: str | None
) -> TextBlock | DataBlock:
    """A base64 data block, or a note when the data is not base64."""
    from agentscope.message import Base64Source, DataBlock

    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return _note(label, f"{name or media_type}: not valid base64, {len(data)} chars omitted")
    return DataBlock(source=Base64Source(data=data, media_type=media_type), name=name)


def _note(label: str, text: str) -> TextBlock:
    """Text standing in for content the agent cannot take as it is."""
    from agentscope.message import TextBlock

    return TextBlock(text=f"[{label}] {text}".rstrip())


def _plain_text(blocks: Sequence[TextBlock | DataBlock]) -> str:
    """The text of blocks, data blocks named by their media type."""
    parts = []
    for block in blocks:
        if block.type == "text":
            parts.append(block.text)
        else:
            parts.append(f"<{block.source.media_type} attachment>")
    return " ".join(parts)
