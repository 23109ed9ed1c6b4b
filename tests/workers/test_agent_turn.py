"""One agent turn on real AgentScope agents with the offline scripted model."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import pytest
from agentscope.message import DataBlock, Msg, TextBlock, ToolCallBlock, ToolResultBlock
from agentscope.middleware import TracingMiddleware
from agentscope.model import DashScopeChatModel, OpenAIChatModel
from agentscope.state import AgentState
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.agent_turn import (
    TurnOutcome,
    load_state,
    run_turn,
    to_agentscope_messages,
)
from agentqueue.workers.models import default_model
from agentqueue.workers.scripted_model import ScriptedChatModel
from agentqueue.workers.toolkit import ToolError, ToolSpec, build_toolkit

MODEL_ENV = ("DASHSCOPE_API_KEY", "DASHSCOPE_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's API keys must not turn these tests into network calls."""
    for name in (*MODEL_ENV, "AGENTQUEUE_MODEL"):
        monkeypatch.delenv(name, raising=False)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "type": "message", "content": [{"type": "text", "text": text}]}]


class Tools:
    """Local tools that record their calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sleeping = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished: list[str] = []  # tools that ran to their end

    def specs(self, **timeouts: float) -> dict[str, ToolSpec]:
        tools = {
            "get_weather": self.get_weather,
            "sleepy": self.sleepy,
            "boom": self.boom,
            "slow_sync": self.slow_sync,
        }
        return {
            name: ToolSpec(name, func, timeout=timeouts.get(name)) for name, func in tools.items()
        }

    def get_weather(self, city: str) -> str:
        """Get the current weather for a city.

        Args:
            city: The city name, e.g. "Paris".
        """
        self.calls.append(("get_weather", {"city": city}))
        return "sunny, 21°C"

    async def sleepy(self, seconds: float) -> str:
        """Sleep, then say so.

        Args:
            seconds: How long to sleep.
        """
        self.calls.append(("sleepy", {"seconds": seconds}))
        self.sleeping.set()
        try:
            await asyncio.sleep(seconds)  # the slow tool under test
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        self.finished.append("sleepy")
        return f"slept {seconds} s"

    def slow_sync(self, seconds: float) -> str:
        """Block the calling thread, then say so.

        Args:
            seconds: How long to block.
        """
        self.calls.append(("slow_sync", {"seconds": seconds}))
        time.sleep(seconds)  # the blocking tool under test
        self.finished.append("slow_sync")
        return f"blocked {seconds} s"

    def boom(self) -> str:
        """Always fails."""
        self.calls.append(("boom", {}))
        raise ValueError("boom")


def context(
    tools: dict[str, ToolSpec],
    state_json: str | None = None,
    *,
    delay: float = 0.0,
    invoke_remote: Any = None,
    tracing: bool = False,
) -> AgentContext:
    return AgentContext(
        agent_name="weather",
        session_id="session-1",
        user_id="u1",
        state=load_state(state_json) if state_json else None,
        tools=tools,
        invoke_remote=invoke_remote,
        tracing=tracing,
        model_factory=lambda: ScriptedChatModel(delay=delay),
    )


async def turn(ctx: AgentContext, text: str, deltas: list[str] | None = None) -> TurnOutcome:
    async def on_delta(delta: str) -> None:
        if deltas is not None:
            deltas.append(delta)

    agent = ctx.build_agent("You answer weather questions.")
    return await run_turn(agent, user(text), on_delta)


def assert_closed(state: AgentState) -> None:
    """Every tool call in memory has its result and is finished: no half-written turn."""
    calls = [b for m in state.context for b in m.content if isinstance(b, ToolCallBlock)]
    results = {b.id for m in state.context for b in m.content if isinstance(b, ToolResultBlock)}
    assert all(c.id in results for c in calls), "a tool call has no result"
    assert all(c.state == "finished" for c in calls)
    assert state.get_unfinished_tool_calls("weather") == []
    assert not state.has_awaiting_tool_calls("weather")


async def test_a_new_agent_restored_from_the_saved_state_remembers_what_the_user_said() -> None:
    tools = Tools().specs()
    first = await turn(context(tools), "My name is Ada")
    assert first.text == "Nice to meet you, Ada. I'll remember that."

    second = await turn(context(tools, first.state_json), "What is my name?")

    assert second.text == "Your name is Ada."
    assert second.finished_reason == "completed"
    forgetful = await turn(context(tools), "What is my name?")
    assert forgetful.text == "You haven't told me yet."


async def test_the_scripted_model_recalls_several_facts_in_any_spelling() -> None:
    tools = Tools().specs()
    state = None
    for said in ("Remember that my favourite colour is green", "I live in Lisbon"):
        state = (await turn(context(tools, state), said)).state_json

    assert (await turn(context(tools, state), "What's my favorite color?")).text == (
        "Your favourite colour is green."
    )
    assert (await turn(context(tools, state), "Where do I live?")).text == "You live in Lisbon."
    told = await turn(context(tools, state), "What did I tell you?")
    assert told.text == "You told me: your favourite colour is green; you live in Lisbon."


async def test_a_weather_question_runs_the_local_tool_and_answers_with_its_result() -> None:
    tools = Tools()

    outcome = await turn(context(tools.specs()), "What's the weather in Paris?")

    assert tools.calls == [("get_weather", {"city": "Paris"})]
    assert outcome.tool_calls == ("get_weather",)
    assert outcome.text == "The weather in Paris: sunny, 21°C."
    assert outcome.finished_reason == "completed"
    assert_closed(load_state(outcome.state_json))


async def test_a_remote_tool_call_reaches_invoke_remote_with_name_arguments_and_timeout() -> None:
    local = Tools()
    sent: list[tuple[str, dict[str, Any], float | None]] = []

    async def invoke_remote(name: str, arguments: dict[str, Any], seconds: float | None) -> str:
        sent.append((name, arguments, seconds))
        return "rainy, 12°C"

    remote = {"get_weather": ToolSpec("get_weather", local.get_weather, remote=True, timeout=2.5)}

    outcome = await turn(context(remote, invoke_remote=invoke_remote), "Weather in Oslo?")

    assert sent == [("get_weather", {"city": "Oslo"}, 2.5)]
    assert local.calls == []
    assert outcome.text == "The weather in Oslo: rainy, 12°C."


async def test_a_remote_tool_shows_the_model_the_same_schema_as_the_local_function() -> None:
    tools = Tools()

    async def never(name: str, arguments: dict[str, Any], seconds: float | None) -> str:
        raise AssertionError("not called")

    local = build_toolkit([ToolSpec("get_weather", tools.get_weather)])
    remote = build_toolkit([ToolSpec("get_weather", tools.get_weather, remote=True)], never)

    schemas = await remote.get_tool_schemas()
    assert schemas == await local.get_tool_schemas()
    assert schemas[0]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert schemas[0]["function"]["description"] == "Get the current weather for a city."


@pytest.mark.parametrize(
    ("spec_timeout", "command", "failure"),
    [
        (None, "/tool boom {}", "The tool boom failed: tool boom failed: ValueError: boom."),
        (
            0.2,
            '/tool sleepy {"seconds": 30}',
            "The tool sleepy failed: tool sleepy timed out after 0.2 s.",
        ),
        (
            0.1,
            '/tool slow_sync {"seconds": 0.6}',
            "The tool slow_sync failed: tool slow_sync timed out after 0.1 s.",
        ),
    ],
    ids=["raises", "async-times-out", "sync-times-out"],
)
async def test_a_failing_local_tool_ends_the_turn_with_an_answer_naming_the_failure(
    spec_timeout: float | None, command: str, failure: str
) -> None:
    timeouts = {"sleepy": spec_timeout, "slow_sync": spec_timeout} if spec_timeout else {}
    kit = Tools()

    outcome = await turn(context(kit.specs(**timeouts)), command)
    finished_before_the_answer = list(kit.finished)

    assert outcome.finished_reason == "completed"
    assert outcome.text == failure
    assert finished_before_the_answer == []  # a timed-out tool's answer did not wait for it
    state = load_state(outcome.state_json)
    assert_closed(state)
    [result] = [b for b in state.context[-1].content if isinstance(b, ToolResultBlock)]
    assert result.state == "error"


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (
            ToolError("tool get_weather timed out after 2.0 s"),
            "tool get_weather timed out after 2.0 s",
        ),
        (TimeoutError(), "tool get_weather timed out after 2.0 s"),
        (KeyError("city"), "tool get_weather failed: KeyError: 'city'"),
    ],
    ids=["tool-error-as-is", "timeout", "other-error"],
)
async def test_a_failing_remote_tool_ends_the_turn_with_an_answer_naming_the_failure(
    error: Exception, failure: str
) -> None:
    async def invoke_remote(name: str, arguments: dict[str, Any], seconds: float | None) -> str:
        raise error

    spec = ToolSpec("get_weather", Tools().get_weather, remote=True, timeout=2.0)

    outcome = await turn(
        context({"get_weather": spec}, invoke_remote=invoke_remote), "Weather in Rome?"
    )

    assert outcome.finished_reason == "completed"
    assert outcome.text == f"The tool get_weather failed: {failure}."


@pytest.mark.parametrize("question", ["Hello there", "What's the weather in Paris?"])
async def test_streaming_sends_several_deltas_that_add_up_to_the_final_text(question: str) -> None:
    deltas: list[str] = []

    outcome = await turn(context(Tools().specs()), question, deltas)

    assert len(deltas) >= 2
    assert "".join(deltas) == outcome.text


async def test_cancelling_while_a_tool_sleeps_interrupts_the_turn_and_the_next_turn_works() -> None:
    tools = Tools()
    specs = tools.specs()
    first = await turn(context(specs), "My name is Ada")
    running = asyncio.create_task(
        turn(context(specs, first.state_json), '/tool sleepy {"seconds": 30}')
    )
    await asyncio.wait_for(tools.sleeping.wait(), 5)

    running.cancel()
    outcome = await running

    assert tools.cancelled.is_set()  # the tool's sleep was cancelled, not waited out
    assert tools.finished == []
    assert outcome.finished_reason == "interrupted"
    assert outcome.tool_calls == ("sleepy",)
    state = load_state(outcome.state_json)
    assert_closed(state)
    last = state.context[-1]
    assert [b.type for b in last.content] == ["tool_call", "tool_result"]
    assert last.content[1].state == "interrupted"
    # AgentScope's fallback answer is reported, not written into memory.
    assert outcome.text not in json.dumps(state.model_dump(mode="json"))

    after = await turn(context(specs, outcome.state_json), "What is my name?")

    assert after.finished_reason == "completed"
    assert after.text == "Your name is Ada."
    assert_closed(load_state(after.state_json))


async def test_cancelling_a_turn_during_a_remote_tool_call_cancels_the_call() -> None:
    waiting = asyncio.Event()
    cancelled = asyncio.Event()

    async def invoke_remote(name: str, arguments: dict[str, Any], seconds: float | None) -> str:
        waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    spec = ToolSpec("get_weather", Tools().get_weather, remote=True, timeout=60)
    ctx = context({"get_weather": spec}, invoke_remote=invoke_remote)
    running = asyncio.create_task(turn(ctx, "Weather in Bergen?"))
    await asyncio.wait_for(waiting.wait(), 5)

    running.cancel()
    outcome = await running

    assert cancelled.is_set()
    assert outcome.finished_reason == "interrupted"
    assert_closed(load_state(outcome.state_json))


async def test_cancelling_mid_answer_keeps_the_streamed_words_and_the_next_turn_works() -> None:
    deltas: list[str] = []
    two_words = asyncio.Event()

    async def on_delta(delta: str) -> None:
        deltas.append(delta)
        if len(deltas) == 2:
            two_words.set()

    specs = Tools().specs()
    agent = context(specs, delay=0.05).build_agent("You answer weather questions.")
    running = asyncio.create_task(run_turn(agent, user("Tell me a long story"), on_delta))
    await asyncio.wait_for(two_words.wait(), 5)

    running.cancel()
    outcome = await running

    assert outcome.finished_reason == "interrupted"
    assert outcome.text == "I notice the interruption. How can I help you?"
    state = load_state(outcome.state_json)
    # AgentScope keeps the part of the answer that was already streamed.
    partial = state.context[-1].get_text_content()
    assert partial is not None and "".join(deltas).startswith(partial)
    after = await turn(context(specs, outcome.state_json), "Hi again")
    assert after.text == "You said: Hi again"


async def test_a_failing_delta_callback_stops_the_agent_before_the_error_propagates() -> None:
    agent = context(Tools().specs(), delay=0.05).build_agent("You answer weather questions.")

    async def broken(delta: str) -> None:
        raise ConnectionError("reply queue is gone")

    with pytest.raises(ConnectionError, match="reply queue is gone"):
        await run_turn(agent, user("Tell me a long story"), broken)

    # Stopped, not streaming on in the background: no task of the turn is left running.
    assert asyncio.all_tasks() == {asyncio.current_task()}
    answer = agent.state.context[-1].get_text_content() or ""
    assert answer != "You said: Tell me a long story"
    assert "You said: Tell me a long story".startswith(answer)
    assert_closed(agent.state)


async def test_a_turn_cancelled_as_soon_as_it_starts_ends_interrupted_with_closed_memory() -> None:
    agent = context(Tools().specs(), delay=0.05).build_agent("You answer weather questions.")
    running = asyncio.create_task(run_turn(agent, user("What's the weather in Paris?"), None))
    await asyncio.sleep(0)  # one step of the loop: the turn has just started
    running.cancel()

    outcome = await running

    assert outcome.finished_reason == "interrupted"
    state = load_state(outcome.state_json)
    assert_closed(state)
    assert state.context[0].get_text_content() == "What's the weather in Paris?"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Spans of the global SDK provider (installed here unless someone already did)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_tracing_puts_agent_model_and_tool_spans_under_the_callers_span(
    spans: InMemorySpanExporter,
) -> None:
    spans.clear()
    tracer = trace.get_tracer("agentqueue-tests")
    ctx = context(Tools().specs(), tracing=True)
    assert [type(m) for m in ctx.middlewares()] == [TracingMiddleware]

    with tracer.start_as_current_span("handle request") as parent:
        outcome = await turn(ctx, "What's the weather in Paris?")

    assert outcome.finished_reason == "completed"
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert {"invoke_agent weather", "chat scripted", "execute_tool get_weather"} <= set(by_name)
    trace_id = parent.get_span_context().trace_id
    assert all(s.context.trace_id == trace_id for s in by_name.values())
    agent_span = by_name["invoke_agent weather"]
    assert agent_span.parent.span_id == parent.get_span_context().span_id
    for child in ("chat scripted", "execute_tool get_weather"):
        assert by_name[child].parent.span_id == agent_span.context.span_id


def test_the_context_offers_tracing_only_when_asked_and_refuses_unknown_tools() -> None:
    ctx = context(Tools().specs())

    assert ctx.middlewares() == []
    with pytest.raises(ValueError, match=r"unknown tool\(s\) get_time; known tools: boom, "):
        ctx.toolkit("get_weather", "get_time")
    assert ctx.agent_state().session_id == "session-1"


async def test_the_context_toolkit_holds_the_named_tools_or_all_of_them() -> None:
    ctx = context(Tools().specs())

    named = await ctx.toolkit("get_weather").get_tool_schemas()
    every = await ctx.toolkit().get_tool_schemas()

    assert [s["function"]["name"] for s in named] == ["get_weather"]
    assert sorted(s["function"]["name"] for s in every) == [
        "boom",
        "get_weather",
        "sleepy",
        "slow_sync",
    ]


def test_request_messages_of_every_content_kind_become_blocks_or_text_notes() -> None:
    msgs = to_agentscope_messages(
        [
            {"role": "user", "content": "plain string"},
            {
                "role": "user",
                "type": "message",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "image_url": "https://example.com/cat.png"},
                    {"type": "image", "image_url": "data:image/jpeg;base64,AAAA"},
                    {"type": "data", "data": {"k": 1}},
                    {"type": "file", "file_url": "https://example.com/a.pdf", "filename": "a.pdf"},
                    {"type": "file", "file_id": "f-1", "filename": "b.txt"},
                    {"type": "audio", "data": "AAAA", "format": "wav"},
                    {"type": "hologram", "beam": 3},
                ],
            },
            {"role": "system", "content": "be brief"},
            {"role": "assistant", "content": [{"type": "text", "text": "earlier answer"}]},
        ]
    )

    assert [m.role for m in msgs] == ["user", "user", "user", "assistant"]
    blocks = msgs[1].content
    assert isinstance(blocks[0], TextBlock) and blocks[0].text == "look"
    assert isinstance(blocks[1], DataBlock) and str(blocks[1].source.url).endswith("cat.png")
    assert blocks[1].source.media_type == "image/png"
    assert isinstance(blocks[2], DataBlock) and blocks[2].source.media_type == "image/jpeg"
    assert blocks[3].text == '[data] {"k": 1}'
    assert isinstance(blocks[4], DataBlock) and blocks[4].source.media_type == "application/pdf"
    assert blocks[5].text == "[file] b.txt (id f-1)"
    assert isinstance(blocks[6], DataBlock) and blocks[6].source.media_type == "audio/wav"
    assert blocks[7].text.startswith("[hologram content] ")
    assert msgs[2].get_text_content() == "[system message] be brief"


async def test_an_image_reaches_memory_as_data_and_an_unreadable_file_as_a_note() -> None:
    message = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "image_url": "https://example.com/cat.png"},
                {
                    "type": "file",
                    "file_url": "https://example.com/logs.zip",
                    "filename": "logs.zip",
                },
            ],
        }
    ]
    agent = context(Tools().specs()).build_agent("You describe things.")

    outcome = await run_turn(agent, message, None)

    assert outcome.finished_reason == "completed"
    assert outcome.text.startswith("You said: What is this?")
    said: Msg = load_state(outcome.state_json).context[0]
    image, note = said.content[1:]
    assert isinstance(image, DataBlock) and image.source.media_type == "image/png"
    # The model takes no zip files: AgentScope swaps the block for a text reminder.
    assert isinstance(note, TextBlock) and "https://example.com/logs.zip" in note.text


def test_a_request_without_content_is_refused_with_an_example() -> None:
    with pytest.raises(ValueError, match="no content to reply to"):
        to_agentscope_messages([{"role": "user", "content": []}])
    with pytest.raises(TypeError, match="list of message dicts"):
        to_agentscope_messages({"role": "user", "content": "hi"})  # type: ignore[arg-type]


def test_a_corrupt_saved_state_is_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="not valid AgentState JSON"):
        load_state('{"context": 3}')


async def test_the_scripted_model_also_answers_without_streaming() -> None:
    model = ScriptedChatModel(stream=False)
    ctx = AgentContext("weather", "s", tools=Tools().specs(), model_factory=lambda: model)

    outcome = await run_turn(ctx.build_agent("x"), user("What's the weather in Paris?"), None)

    assert outcome.text == "The weather in Paris: sunny, 21°C."


async def test_the_default_path_runs_a_tool_turn_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def local_only(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test forbids network access, tried {address!r}")
        real_connect(sock, address)

    def no_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(host)
        raise OSError(f"test forbids name lookups, tried {host!r}")

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    ctx = AgentContext("weather", "s", tools=Tools().specs(), tracing=True)

    outcome = await run_turn(ctx.build_agent("x"), user("What's the weather in Paris?"), None)

    assert outcome.text == "The weather in Paris: sunny, 21°C."
    assert attempts == []


def test_the_default_model_is_offline_unless_the_environment_names_a_provider(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentqueue.workers.models")
    assert isinstance(default_model(), ScriptedChatModel)

    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-secret")
    dashscope = default_model()
    assert isinstance(dashscope, DashScopeChatModel) and dashscope.model == "qwen-plus"

    monkeypatch.setenv("AGENTQUEUE_MODEL", "scripted")
    assert isinstance(default_model(), ScriptedChatModel)

    monkeypatch.delenv("DASHSCOPE_API_KEY")
    monkeypatch.setenv("AGENTQUEUE_MODEL", "local-llama")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    openai = default_model()
    assert isinstance(openai, OpenAIChatModel) and openai.model == "local-llama"
    assert str(openai.client.base_url).startswith("http://127.0.0.1:8000/v1")

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    default_model()
    assert "secret" not in caplog.text
