"""An offline, deterministic chat model that follows a fixed script.

It lets the worker runtime and its tests run real AgentScope agents (tool calls,
memory, streaming, interruption) without a network or an API key.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import anyio
from agentscope.credential import CredentialBase
from agentscope.formatter import OpenAIChatFormatter
from agentscope.message import (
    HintBlock,
    Msg,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
)
from agentscope.model import ChatModelBase, ChatResponse
from agentscope.tool import ToolChoice
from pydantic import BaseModel

_TOOL_COMMAND = re.compile(r"^/tool\s+(?P<name>\S+)\s*(?P<args>.*)$", re.DOTALL)
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_WEATHER_CITY = re.compile(
    r"\bweather\b.*?\b(?:in|for|at)\s+(?P<city>[^\W\d_][\w' -]*?)"
    r"(?:\s+(?:today|now|right now|tonight|tomorrow))?\s*[?.!]*$",
    re.IGNORECASE,
)
_REMEMBER_PREFIX = re.compile(r"^(?:please\s+)?remember\s+(?:that\s+)?", re.IGNORECASE)
_FACT_MY = re.compile(r"^my\s+(?P<key>[\w' -]+?)\s+is\s+(?P<value>.+?)[.!]*$", re.IGNORECASE)
_FACT_LIVE = re.compile(r"^i\s+live\s+in\s+(?P<value>.+?)[.!]*$", re.IGNORECASE)
_FACT_CALL_ME = re.compile(r"^(?:call\s+me|i\s+am\s+called)\s+(?P<value>.+?)[.!]*$", re.IGNORECASE)
_RECALL_MY = re.compile(r"^what(?:'s|\s+is)\s+my\s+(?P<key>[\w' -]+?)\s*\??$", re.IGNORECASE)
_RECALL_LIVE = re.compile(r"^where\s+do\s+i\s+live\s*\??$", re.IGNORECASE)
_RECALL_ALL = re.compile(r"^what\s+did\s+i\s+tell\s+you\s*\??$", re.IGNORECASE)
_CHUNK = re.compile(r"\S+\s*")
_HOME = "home"


class ScriptedChatModel(ChatModelBase):
    """A deterministic offline chat model: tool results, `/tool`, weather, facts, echo."""

    class Parameters(BaseModel):
        """The scripted model has no tunable parameters."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        stream: bool = True,
        model: str = "scripted",
        context_size: int = 32768,
    ) -> None:
        """Create the model; `delay` is slept before each streamed chunk, in seconds."""
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        super().__init__(
            credential=CredentialBase(name="offline"),
            model=model,
            parameters=self.Parameters(),
            stream=stream,
            max_retries=0,
            retry_delay=0.0,
            context_size=context_size,
        )
        # The agent reads the formatter's media types to decide which input data
        # blocks it keeps; the script never formats (that could download audio URLs).
        self.formatter = OpenAIChatFormatter()
        self.delay = delay

    async def _call_api(
        self,
        model_name: str,
        messages: list[Msg],
        tools: list[dict] | None = None,
        tool_choice: ToolChoice | None = None,
        **kwargs: Any,
    ) -> ChatResponse | AsyncGenerator[ChatResponse, None]:
        """Answer by the script; stream mode yields partial chunks like the real models."""
        tool_names = {t.get("function", {}).get("name") for t in tools or []}
        may_call = tool_choice is None or tool_choice.mode != "none"
        answer = _decide(messages, tool_names if may_call else None)
        if isinstance(answer, ToolCallBlock):
            pieces: list[ChatResponse] = _tool_call_chunks(answer)
        else:
            pieces = _text_chunks(answer)
        if not self.stream:
            if self.delay:
                await anyio.sleep(self.delay * len(pieces))
            block = answer if isinstance(answer, ToolCallBlock) else TextBlock(text=answer)
            return ChatResponse(content=[block], is_last=True)
        return self._stream(pieces)

    async def _stream(self, pieces: list[ChatResponse]) -> AsyncGenerator[ChatResponse, None]:
        """Yield the partial chunks; ChatModelBase accumulates them into the final one."""
        for piece in pieces:
            if self.delay:
                await anyio.sleep(self.delay)
            yield piece


def _text_chunks(text: str) -> list[ChatResponse]:
    """Split text word by word into partial chunks sharing one block id."""
    block_id = uuid.uuid4().hex
    words = _CHUNK.findall(text) or [text]
    return [
        ChatResponse(content=[TextBlock(id=block_id, text=word)], is_last=False) for word in words
    ]


def _tool_call_chunks(call: ToolCallBlock) -> list[ChatResponse]:
    """Split a tool call's JSON arguments into two partial chunks, as providers stream them."""
    half = len(call.input) // 2
    return [
        ChatResponse(
            content=[ToolCallBlock(id=call.id, name=call.name, input=part)],
            is_last=False,
        )
        for part in (call.input[:half], call.input[half:])
    ]


def _decide(messages: Sequence[Msg], tool_names: set[str | None] | None) -> str | ToolCallBlock:
    """Pick the next answer: text, or a tool call (never when `tool_names` is None)."""
    results = _trailing_tool_results(messages)
    if results:
        return " ".join(_describe_result(r, messages) for r in results)

    user_texts = [_text_of(m) for m in messages if m.role == "user"]
    if not user_texts:
        return "Hello! How can I help you?"
    text = user_texts[-1].strip()
    earlier = user_texts[:-1]

    command = _TOOL_COMMAND.match(text)
    if command and tool_names is None:
        return f"I can't call {command['name']} now: tool calls are switched off."
    if command:
        raw_args = command["args"].strip() or "{}"
        try:
            args = json.loads(raw_args)
        except json.JSONDecodeError as e:
            return f"I could not read the arguments for {command['name']}: {e.msg}."
        if not isinstance(args, dict):
            return f"The arguments for {command['name']} must be a JSON object, got {raw_args}."
        return _call(command["name"], args)

    if _WEATHER.search(text) and tool_names and "get_weather" in tool_names:
        city = _WEATHER_CITY.search(text)
        if city is not None:
            return _call("get_weather", {"city": city["city"].strip()})
        home = _remembered_home(earlier)  # "what's the weather where I live?"
        if home is None:
            return "Which city would you like the weather for?"
        return _call("get_weather", {"city": home})

    recall = _recall(text, earlier)
    if recall is not None:
        return recall

    fact = _parse_fact(text)
    if fact is not None:
        key, value = fact
        if key == "name":
            return f"Nice to meet you, {value}. I'll remember that."
        if key == _HOME:
            return f"Got it: you live in {value}. I'll remember that."
        return f"Got it: your {key} is {value}. I'll remember that."

    return f"You said: {text}" if text else "You said nothing."


def _remembered_home(earlier: Sequence[str]) -> str | None:
    """The city the user said they live in, most recent first."""
    for said in reversed(earlier):
        fact = _parse_fact(_REMEMBER_PREFIX.sub("", said.strip()))
        if fact is not None and fact[0] == _HOME:
            return fact[1]
    return None


def _call(name: str, args: dict[str, Any]) -> ToolCallBlock:
    """Build a tool call block with a fresh id."""
    return ToolCallBlock(
        id=f"call_{uuid.uuid4().hex[:24]}",
        name=name,
        input=json.dumps(args, ensure_ascii=False),
    )


def _trailing_tool_results(messages: Sequence[Msg]) -> list[ToolResultBlock]:
    """The tool results the last message ends with, i.e. not yet answered by text."""
    if not messages:
        return []
    results: list[ToolResultBlock] = []
    for block in reversed(messages[-1].content):
        if isinstance(block, HintBlock):
            # Runtime-state hints may follow the results; they are not an answer.
            continue
        if isinstance(block, ToolResultBlock):
            results.append(block)
            continue
        if isinstance(block, ToolCallBlock):
            continue
        break
    return list(reversed(results))


def _describe_result(result: ToolResultBlock, messages: Sequence[Msg]) -> str:
    """One sentence that reports a tool result verbatim."""
    text = _output_text(result.output).strip()
    if result.state in ("error", "interrupted", "denied"):
        return _sentence(f"The tool {result.name} failed: {text}")
    if result.name == "get_weather":
        city = _call_args(result.id, messages).get("city")
        if city:
            return _sentence(f"The weather in {city}: {text}")
    return _sentence(f"Tool {result.name} returned: {text}")


def _sentence(text: str) -> str:
    """End the text with a full stop unless it already ends a sentence."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _call_args(call_id: str, messages: Sequence[Msg]) -> dict[str, Any]:
    """The arguments of the tool call with the given id, or {} if unreadable."""
    for msg in reversed(messages):
        for block in msg.content:
            if isinstance(block, ToolCallBlock) and block.id == call_id:
                try:
                    args = json.loads(block.input or "{}")
                except json.JSONDecodeError:
                    return {}
                return args if isinstance(args, dict) else {}
    return {}


def _output_text(output: str | Sequence[Any]) -> str:
    """The text of a tool result's output."""
    if isinstance(output, str):
        return output
    return "".join(block.text for block in output if isinstance(block, TextBlock))


def _text_of(msg: Msg) -> str:
    """The text of a message."""
    return msg.get_text_content(separator=" ") or ""


def _normalise_key(key: str) -> str:
    """Fold spelling variants so 'favorite color' finds 'favourite colour'."""
    key = " ".join(key.lower().split())
    return key.replace("favorite", "favourite").replace("color", "colour")


def _parse_fact(text: str) -> tuple[str, str] | None:
    """A (key, value) fact stated in the text, if any."""
    text = _REMEMBER_PREFIX.sub("", text.strip())
    if m := _FACT_LIVE.match(text):
        return _HOME, m["value"].strip()
    if m := _FACT_CALL_ME.match(text):
        return "name", m["value"].strip()
    if m := _FACT_MY.match(text):
        return _normalise_key(m["key"]), m["value"].strip()
    return None


def _recall(text: str, earlier: Sequence[str]) -> str | None:
    """Answer a recall question from the earlier user messages; None if not one."""
    facts: dict[str, str] = {}
    for said in earlier:
        fact = _parse_fact(said)
        if fact is not None:
            facts[fact[0]] = fact[1]

    if _RECALL_ALL.match(text):
        if not facts:
            return "You haven't told me anything yet."
        told = "; ".join(_state_fact(k, v) for k, v in facts.items())
        return f"You told me: {told}."
    if _RECALL_LIVE.match(text):
        key = _HOME
    elif m := _RECALL_MY.match(text):
        key = _normalise_key(m["key"])
    else:
        return None
    if key not in facts:
        return "You haven't told me yet."
    said = _state_fact(key, facts[key])
    return _sentence(said[0].upper() + said[1:])


def _state_fact(key: str, value: str) -> str:
    """A fact in the second person, lower-case first letter."""
    if key == _HOME:
        return f"you live in {value}"
    return f"your {key} is {value}"
