"""AgentScope's OpenAI and DashScope model classes over HTTP against the local server, and the
one layer that retries their calls: what is tried again, how often, and what a caller is told."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from agentscope.message import UserMsg

from agentqueue.deploy.local.openai import Answer, CallTool, Fail, Hang, LocalOpenAI
from agentqueue.workers.errors import ModelCallError, ModelConfigError
from agentqueue.workers.model_guard import DashScopeChatModel, OpenAIChatModel
from agentqueue.workers.models import ModelRuntime, choose_model

KEY = "sk-test-0123456789"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalOpenAI]:
    with LocalOpenAI(api_key=KEY, models=["test-model", "qwen-test"]) as running:
        yield running


@pytest.fixture
def openai(server: LocalOpenAI) -> LocalOpenAI:
    server.reset()
    return server


def runtime(server: LocalOpenAI, provider: str = "openai", **extra: str) -> ModelRuntime:
    if provider == "dashscope":
        env = {"DASHSCOPE_API_KEY": KEY, "DASHSCOPE_BASE_URL": server.dashscope_url}
        env["AGENTQUEUE_MODEL"] = "qwen-test"
    else:
        env = {
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": server.url,
            "AGENTQUEUE_MODEL": "test-model",
        }
    env.update({"AGENTQUEUE_MODEL_ATTEMPTS": "3", "AGENTQUEUE_MODEL_TIMEOUT": "1"}, **extra)
    return ModelRuntime.from_env(env=env)


async def final(response: Any) -> Any:
    """The complete response of a call, streamed or not."""
    if hasattr(response, "__aiter__"):
        last = None
        async for chunk in response:
            last = chunk
        return last
    return response


async def ask(model: Any, text: str = "hello there", **kwargs: Any) -> Any:
    return await final(await model([UserMsg(name="user", content=text)], **kwargs))


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_both_model_classes_read_text_tool_calls_and_usage_from_the_server(
    openai: LocalOpenAI, provider: str, stream: bool
) -> None:
    model = runtime(openai, provider).model(stream=stream)
    assert isinstance(model, DashScopeChatModel if provider == "dashscope" else OpenAIChatModel)
    openai.script(CallTool("get_weather", {"city": "Paris"}, call_id="call_1"))
    called = await ask(model, "weather in Paris please", tools=[WEATHER_TOOL])
    answered = await ask(model, "hello there")
    [call] = called.content
    assert (call.id, call.name, call.input) == ("call_1", "get_weather", '{"city": "Paris"}')
    assert answered.content[0].text == "You said: hello there"
    first, second = openai.attempts()
    assert (first.stream, first.tools, second.tools) == (stream, ["get_weather"], [])
    assert (
        (answered.usage.input_tokens, answered.usage.output_tokens)
        == (
            second.prompt_tokens,
            second.completion_tokens,
        )
        == (2, 4)
    )


async def test_a_streamed_answer_reaches_the_caller_chunk_by_chunk(openai: LocalOpenAI) -> None:
    model = runtime(openai).model()
    openai.script(Answer("one two three four"))
    stream = await model([UserMsg(name="user", content="count")])
    texts = [chunk.content[0].text async for chunk in stream if not chunk.is_last]
    assert texts == ["one ", "two ", "three ", "four"]


async def test_a_429_is_tried_again_after_its_retry_after(openai: LocalOpenAI) -> None:
    openai.script(Fail(429, retry_after=1))
    response = await ask(runtime(openai).model())
    refused, accepted = openai.attempts()
    assert response.content[0].text == "You said: hello there"
    assert (refused.status, accepted.status) == (429, 200)
    assert accepted.at - refused.at >= 1.0


async def test_server_errors_are_tried_attempts_times_in_all_then_fail_naming_model_and_url(
    openai: LocalOpenAI,
) -> None:
    openai.script(Fail(500), Fail(503), Fail(500), Fail(500))
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(openai).model())
    assert str(caught.value) == (
        f"openai model 'test-model' at {openai.url} failed 3 attempts: HTTP 500 server error;"
        " HTTP 503 server error; HTTP 500 server error"
    )
    # One layer retries: not the openai client (2 more each) nor AgentScope (3 more each).
    assert [a.status for a in openai.attempts()] == [500, 503, 500]


async def test_a_hanging_call_is_cut_at_the_per_call_timeout(openai: LocalOpenAI) -> None:
    openai.script(Hang(), Hang())
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(openai, AGENTQUEUE_MODEL_ATTEMPTS="2").model())
    assert str(caught.value) == (
        f"openai model 'test-model' at {openai.url} failed 2 attempts:"
        " no response within 1 s; no response within 1 s"
    )
    assert len(openai.attempts()) == 2


@pytest.mark.parametrize("provider", ["openai", "dashscope"])
async def test_a_refused_key_fails_at_once_and_the_error_never_shows_the_key(
    server: LocalOpenAI, provider: str
) -> None:
    server.reset()
    wrong = "sk-wrong-9876543210"
    extra = {"DASHSCOPE_API_KEY" if provider == "dashscope" else "OPENAI_API_KEY": wrong}
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(server, provider, **extra).model())
    model, url, variable = (
        ("qwen-test", server.dashscope_url, "DASHSCOPE_API_KEY")
        if provider == "dashscope"
        else ("test-model", server.url, "OPENAI_API_KEY")
    )
    assert str(caught.value) == (
        f"{provider} model {model!r} at {url} refused the API key (HTTP 401); check {variable}"
    )
    assert wrong[:8] not in str(caught.value) and len(server.attempts()) == 1


async def test_an_unknown_model_fails_at_once_naming_it(openai: LocalOpenAI) -> None:
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(openai).model("gpt-nonexistent"))
    assert str(caught.value) == (
        f"openai model 'gpt-nonexistent' at {openai.url} was not found (HTTP 404): the server"
        " has no model 'gpt-nonexistent'; check AGENTQUEUE_MODEL and OPENAI_BASE_URL"
    )
    assert len(openai.attempts()) == 1


async def test_a_retry_after_longer_than_the_longest_wait_fails_at_once(
    openai: LocalOpenAI,
) -> None:
    openai.script(Fail(429, retry_after=3600))
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(openai).model())
    assert str(caught.value) == (
        f"openai model 'test-model' at {openai.url} is rate limited (HTTP 429) and asks to wait"
        " 3600 s, longer than AGENTQUEUE_MODEL_MAX_WAIT=60 s"
    )


async def test_a_bad_request_is_not_retried_and_the_key_is_scrubbed_from_its_message(
    openai: LocalOpenAI,
) -> None:
    openai.script(Fail(400, message=f"context too long for key {KEY}"))
    with pytest.raises(ModelCallError) as caught:
        await ask(runtime(openai).model())
    assert str(caught.value) == (
        f"openai model 'test-model' at {openai.url} refused the request (HTTP 400):"
        " context too long for key ***"
    )


def test_nothing_configured_is_the_scripted_model_and_scripted_wins_over_keys() -> None:
    assert choose_model({}).provider == "scripted"
    keys = {"OPENAI_API_KEY": KEY, "DASHSCOPE_API_KEY": KEY}
    assert choose_model({**keys, "AGENTQUEUE_MODEL": "scripted"}).provider == "scripted"
    assert choose_model(keys).provider == "dashscope"
    assert choose_model({**keys, "AGENTQUEUE_MODEL_PROVIDER": "openai"}).provider == "openai"
    local = choose_model(
        {"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1", "AGENTQUEUE_MODEL": "llama3.1:8b"}
    )
    assert (local.provider, local.model, local.api_key) == ("openai", "llama3.1:8b", None)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"AGENTQUEUE_MODEL": "gpt-4o"},
            "AGENTQUEUE_MODEL=gpt-4o names a model, but no provider is configured: set"
            " OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server such as vLLM or"
            " Ollama) or DASHSCOPE_API_KEY; AGENTQUEUE_MODEL=scripted uses the offline model",
        ),
        (
            {"AGENTQUEUE_MODEL": "qwen-max", "AGENTQUEUE_MODEL_PROVIDER": "dashscope"},
            "DashScope model 'qwen-max' is configured, but DASHSCOPE_API_KEY is not set; set it,"
            " or AGENTQUEUE_MODEL=scripted for the offline model",
        ),
        (
            {"OPENAI_API_KEY": KEY, "AGENTQUEUE_MODEL_TIMEOUT": "soon"},
            "AGENTQUEUE_MODEL_TIMEOUT must be a number of seconds, got 'soon'",
        ),
        (
            {"OPENAI_API_KEY": KEY, "AGENTQUEUE_MODEL_ATTEMPTS": "0"},
            "AGENTQUEUE_MODEL_ATTEMPTS must be at least 1, got '0'",
        ),
    ],
    ids=["model-without-key", "dashscope-without-key", "bad-timeout", "no-attempts"],
)
def test_a_model_that_cannot_be_used_is_refused_with_what_to_set(
    env: dict[str, str], error: str
) -> None:
    with pytest.raises(ModelConfigError) as caught:
        choose_model(env)
    assert str(caught.value) == error


def test_the_description_names_model_url_policy_and_limit_but_not_the_key(
    server: LocalOpenAI,
) -> None:
    described = runtime(
        server,
        AGENTQUEUE_RATE_LIMIT="requests=10,tokens=5000,window=1",
        AGENTQUEUE_RATE_LIMIT_STORE="redis://:hunter2@127.0.0.1:6379/0",
    ).describe()
    assert described == (
        f"openai model 'test-model' at {server.url} with a key; 3 attempts per call, 1 s each;"
        " rate limit 10 requests and 5000 tokens per 1 s (sliding, 0.25 s slack) shared in"
        " redis://:***@127.0.0.1:6379/0"
    )
    assert KEY not in described
    assert ModelRuntime.from_env(env={}).describe() == (
        "offline scripted model (AGENTQUEUE_MODEL=scripted, no network)"
    )
