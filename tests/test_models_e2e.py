"""Agent workers on RabbitMQ over a real OpenAI-compatible HTTP server: streaming as the model
writes, a tool the model chooses run on a tool worker, memory sent back in turn 2, what a caller
is told for each failure, and a worker that refuses to start without its key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agentqueue import Client, RequestFailed
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.openai import Answer, CallTool, Fail, Hang, LocalOpenAI
from agentqueue.protocol import new_id
from agentqueue.telemetry.trace_file import read_spans
from tests.processes import ROOT, WorkerProcess, workers

pytestmark = [pytest.mark.slow, pytest.mark.broker]

KEY = "sk-e2e-0123456789abcdef"
PARTITIONS = "4"


def worker_args(url: str, ns: str, store: str, role: str, trace: Path) -> tuple[str, ...]:
    return (
        "--app",
        "tests.apps.models:app",
        "--broker",
        url,
        "--store",
        store,
        "--namespace",
        ns,
        "--partition-count",
        PARTITIONS,
        "--tool-partition-count",
        PARTITIONS,
        "--role",
        role,
        "--trace-file",
        str(trace),
    )


class Deployment:
    """The server, one agent worker and one tool worker, shared by this module's tests."""

    def __init__(
        self,
        server: LocalOpenAI,
        topology: Topology,
        agents: WorkerProcess,
        tools: WorkerProcess,
        trace: Path,
    ) -> None:
        self.server, self.topology = server, topology
        self.agents, self.tools, self.trace = agents, tools, trace


@pytest.fixture(scope="module")
def deployment(rabbitmq_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("models-e2e")
    ns = f"me{new_id()[:6]}"
    store = f"sqlite:///{tmp}/sessions.db"
    with LocalOpenAI(api_key=KEY, models=["test-model"]) as server:
        env = {
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": KEY,
            "AGENTQUEUE_MODEL": "test-model",
            "AGENTQUEUE_MODEL_ATTEMPTS": "3",
            "AGENTQUEUE_MODEL_TIMEOUT": "1",
            "DASHSCOPE_API_KEY": "",
        }
        with workers(
            worker_args(rabbitmq_url, ns, store, "agents", tmp / "agents.jsonl"),
            worker_args(rabbitmq_url, ns, store, "tools", tmp / "tools.jsonl"),
            env=env,
        ) as (agents, tools):
            topology = Topology(namespace=ns, partitions=4, tool_partitions=4)
            yield Deployment(server, topology, agents, tools, tmp / "agents.jsonl")


@pytest.fixture
def live(deployment: Deployment) -> Deployment:
    deployment.server.reset()
    return deployment


async def test_the_start_line_names_the_model_and_its_policy(live: Deployment) -> None:
    assert any(
        f"agents use the openai model 'test-model' at {live.server.url} with a key;"
        " 3 attempts per call, 1 s each" in line
        for line in live.agents.lines
    )


async def test_tokens_reach_the_stream_while_the_model_is_still_writing(
    rabbitmq_url: str, live: Deployment
) -> None:
    gate = threading.Event()  # the server holds its last word until the test has seen four
    live.server.script(Answer("Queues carry agent requests well", gate=gate))
    received: list[tuple[float, str]] = []
    async with Client(rabbitmq_url, topology=live.topology) as client:
        with anyio.fail_after(60):
            async for event in client.stream("Tell me about queues", session_id=new_id()):
                if event.kind == "delta":
                    received.append((time.monotonic(), event.text))
                    if len(received) == 4:
                        gate.set()
                else:
                    final = event
    [attempt] = live.server.attempts()
    assert [text for _, text in received] == ["Queues ", "carry ", "agent ", "requests ", "well"]
    assert attempt.stream and attempt.finished_at is not None
    assert all(at < attempt.finished_at for at, _ in received[:4])
    assert final.kind == "final" and final.text == "Queues carry agent requests well"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.calls) == (
        attempt.prompt_tokens,
        attempt.completion_tokens,
        1,
    )
    assert final.usage.model == "test-model"


async def test_a_tool_the_model_chooses_runs_on_a_tool_worker_and_its_result_is_used(
    rabbitmq_url: str, live: Deployment
) -> None:
    live.server.script(CallTool("get_weather", {"city": "Paris"}, call_id="call_paris"))
    async with Client(rabbitmq_url, topology=live.topology) as client:
        result = await client.call("What's the weather in Paris?", session_id=new_id(), timeout=60)
    chose, answered = live.server.attempts()
    weather = f"sunny, 21°C in Paris (tool worker {live.tools.pid})"
    assert chose.tools == ["get_weather"]
    tool_message = answered.last_message
    assert (tool_message["role"], tool_message["tool_call_id"]) == ("tool", "call_paris")
    assert weather in json.dumps(tool_message["content"], ensure_ascii=False)
    assert result.text == f"The tool said: {weather}"
    assert result.usage is not None and result.usage.calls == 2
    assert result.usage.prompt_tokens == chose.prompt_tokens + answered.prompt_tokens


async def test_turn_two_sends_the_model_what_turn_one_said(
    rabbitmq_url: str, live: Deployment
) -> None:
    live.server.script(Answer("Nice to meet you, Ada."), Answer("Your name is Ada."))
    session = new_id()
    async with Client(rabbitmq_url, topology=live.topology) as client:
        await client.call("My name is Ada.", session_id=session, timeout=60)
        second = await client.call("What is my name?", session_id=session, timeout=60)
    _, turn_two = live.server.attempts()
    said = [(m["role"], json.dumps(m.get("content"))) for m in turn_two.messages]
    assert [role for role, _ in said] == ["system", "user", "assistant", "user"]
    assert ["My name is Ada.", "Nice to meet you, Ada.", "What is my name?"] == [
        text for text in (json.loads(c) for _, c in said[1:]) for text in _texts(text)
    ]
    assert second.text == "Your name is Ada."


def _texts(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content or [] if isinstance(part, dict) and "text" in part]  # type: ignore[union-attr]


async def test_a_429_is_waited_out_and_the_request_still_answers(
    rabbitmq_url: str, live: Deployment
) -> None:
    live.server.script(Fail(429, retry_after=1))
    async with Client(rabbitmq_url, topology=live.topology) as client:
        result = await client.call("hello", session_id=new_id(), timeout=60)
    refused, accepted = live.server.attempts()
    assert result.text == "You said: hello"
    assert (refused.status, accepted.status) == (429, 200)
    assert accepted.at - refused.at >= 1.0


@pytest.mark.parametrize(
    ("steps", "agent", "error", "tries"),
    [
        (
            [Fail(500), Fail(502), Fail(500)],
            "assistant",
            "openai model 'test-model' at {url} failed 3 attempts: HTTP 500 server error;"
            " HTTP 502 server error; HTTP 500 server error",
            3,
        ),
        (
            [Fail(429, retry_after=0)] * 3,
            "assistant",
            "openai model 'test-model' at {url} failed 3 attempts: HTTP 429 rate limited;"
            " HTTP 429 rate limited; HTTP 429 rate limited",
            3,
        ),
        (
            [Hang()] * 3,
            "assistant",
            "openai model 'test-model' at {url} failed 3 attempts: no response within 1 s;"
            " no response within 1 s; no response within 1 s",
            3,
        ),
        (
            [Fail(401)],
            "assistant",
            "openai model 'test-model' at {url} refused the API key (HTTP 401);"
            " check OPENAI_API_KEY",
            1,
        ),
        (
            [],
            "stranger",
            "openai model 'no-such-model' at {url} was not found (HTTP 404): the server has no"
            " model 'no-such-model'; check AGENTQUEUE_MODEL and OPENAI_BASE_URL",
            1,
        ),
    ],
    ids=["server-errors", "rate-limited", "hang", "bad-key", "unknown-model"],
)
async def test_each_failure_reaches_the_caller_with_provider_and_model_named(
    rabbitmq_url: str, live: Deployment, steps: list, agent: str, error: str, tries: int
) -> None:
    live.server.script(*steps)
    async with Client(rabbitmq_url, topology=live.topology) as client:
        with pytest.raises(RequestFailed) as caught:
            await client.call("hello", session_id=new_id(), agent=agent, timeout=60)
    assert str(caught.value) == error.format(url=live.server.url)
    assert KEY not in str(caught.value)
    # The model layer tried; the pipeline did not run the turn again on top.
    assert len(live.server.attempts()) == tries


async def test_the_process_span_carries_the_genai_usage(
    rabbitmq_url: str, live: Deployment
) -> None:
    session = new_id()
    async with Client(rabbitmq_url, topology=live.topology) as client:
        result = await client.call("count my tokens", session_id=session, timeout=60)
    [attempt] = live.server.attempts()
    with anyio.fail_after(30):
        while not (spans := _process_spans(live.trace, session)):
            await anyio.sleep(0.1)
    [span] = spans
    attributes = span["attributes"]
    assert attributes["gen_ai.usage.input_tokens"] == attempt.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == attempt.completion_tokens
    assert attributes["gen_ai.request.model"] == "test-model"
    assert result.usage is not None and result.usage.total_tokens == (
        attempt.prompt_tokens + attempt.completion_tokens
    )


def _process_spans(trace: Path, session: str) -> list[dict]:
    if not trace.exists():
        return []
    return [
        s
        for s in read_spans([trace])
        if s["name"].startswith("process ")
        and s["attributes"].get("agentqueue.session_id") == session
        and "gen_ai.usage.input_tokens" in s["attributes"]
    ]


def test_a_named_model_without_a_key_refuses_to_start_the_worker(rabbitmq_url: str) -> None:
    env = {
        "AGENTQUEUE_MODEL": "gpt-4o",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        "DASHSCOPE_API_KEY": "",
        "DASHSCOPE_BASE_URL": "",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentqueue.cli",
            "worker",
            "--app",
            "tests.apps.models:app",
            "--broker",
            rabbitmq_url,
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "agentqueue worker: AGENTQUEUE_MODEL=gpt-4o names a model, but no provider is"
        " configured: set OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server"
        " such as vLLM or Ollama) or DASHSCOPE_API_KEY; AGENTQUEUE_MODEL=scripted uses the"
        " offline model"
    )


async def test_a_dashscope_worker_streams_and_uses_a_tool_the_model_chose(
    rabbitmq_url: str, live: Deployment, tmp_path: Path
) -> None:
    """AgentScope's DashScope model class, through its OpenAI-compatible mode, on the same path."""
    ns = f"md{new_id()[:6]}"
    env = {
        "DASHSCOPE_API_KEY": KEY,
        "DASHSCOPE_BASE_URL": live.server.dashscope_url,
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
        "AGENTQUEUE_MODEL": "test-model",
    }
    args = worker_args(rabbitmq_url, ns, f"sqlite:///{tmp_path}/s.db", "all", tmp_path / "t.jsonl")
    live.server.script(
        CallTool("get_weather", {"city": "Oslo"}, call_id="call_oslo"), Answer("Cold in Oslo")
    )
    with workers(args, env=env) as [worker]:
        assert any(
            f"agents use the dashscope model 'test-model' at {live.server.dashscope_url}" in line
            for line in worker.lines
        )
        topology = Topology(namespace=ns, partitions=4, tool_partitions=4)
        async with Client(rabbitmq_url, topology=topology) as client:
            with anyio.fail_after(60):
                events = [e async for e in client.stream("Weather in Oslo?", session_id=new_id())]
    chose, answered = live.server.attempts()
    assert {chose.path, answered.path} == {"/compatible-mode/v1/chat/completions"}
    assert chose.tools == ["get_weather"] and chose.stream
    weather = f"sunny, 21°C in Oslo (tool worker {worker.pid})"
    assert weather in json.dumps(answered.last_message["content"], ensure_ascii=False)
    assert [e.text for e in events if e.kind == "delta"] == ["Cold ", "in ", "Oslo"]
    assert events[-1].kind == "final" and events[-1].text == "Cold in Oslo"
    assert events[-1].usage is not None and events[-1].usage.calls == 2
