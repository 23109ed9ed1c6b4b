"""The example apps run end to end on the embedded broker, tools as events included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio

from agentqueue import Client
from agentqueue.broker.memory import MemoryBroker
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.research import app as research
from examples.weather import app as weather
from tests.config import worker_settings
from tests.processes import ROOT


async def serve_and_call(app, prompts: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    url = f"memory://examples-{new_id()[:8]}"
    answers = []
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        for role in ("agents", "tools"):
            await tg.start(
                Worker(
                    app,
                    broker,
                    MemorySessionStore(f"memory://{new_id()[:8]}"),
                    worker_settings(),
                    role=role,
                ).run
            )
        async with Client(broker) as client:
            for prompt in prompts:
                answers.append((await client.call(prompt, session_id="s1", timeout=30)).text)
        tg.cancel_scope.cancel()
    return answers


async def test_the_weather_example_answers_from_its_remote_tool() -> None:
    assert await serve_and_call(weather, ["What's the weather in Lisbon?"]) == [
        "The weather in Lisbon: clear, 24°C."
    ]


async def test_the_research_example_uses_a_remote_and_a_local_tool() -> None:
    answers = await serve_and_call(
        research,
        [
            '/tool search {"query": "quorum queues"}',
            '/tool take_note {"session": "s1", "note": "quorum queues use Raft"}',
        ],
    )
    assert answers[0].startswith("Tool search returned: RabbitMQ's replicated FIFO queues")
    assert answers[1] == "Tool take_note returned: noted (1 notes so far)."


async def test_a_remote_tool_that_fails_or_times_out_comes_back_to_the_agent_as_a_tool_error() -> (
    None
):
    from agentqueue import App
    from agentqueue.workers.agent_context import AgentContext

    app = App("failing-tools")

    @app.tool("explode", timeout=5)
    async def explode() -> str:
        """Always fails."""
        raise ValueError("the lab is on fire")

    @app.tool("stall", timeout=0.5)
    async def stall() -> str:
        """Never answers in time."""
        await anyio.sleep(10)
        return "late"

    @app.agent("a")
    def agent(ctx: AgentContext):  # type: ignore[no-untyped-def]
        return ctx.build_agent("You help.")

    answers = await serve_and_call(app, ["/tool explode {}", "/tool stall {}"])
    assert answers == [
        "The tool explode failed: tool explode failed: ValueError: the lab is on fire.",
        "The tool stall failed: tool stall timed out after 0.5 s.",
    ]


async def test_agent_turns_waiting_for_tools_never_starve_the_tools_on_the_same_worker() -> None:
    """One worker serving agents and tools, more turns in flight than its concurrency."""
    url = f"memory://starve-{new_id()[:8]}"
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        worker = Worker(
            weather,
            broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(concurrency=2),
        )
        await tg.start(worker.run)
        async with Client(broker) as client:
            answers: list[str] = []

            async def ask(i: int) -> None:
                result = await client.call(
                    "What's the weather in Paris?", session_id=f"s{i}", timeout=60
                )
                answers.append(result.text)

            async with anyio.create_task_group() as asks:
                for i in range(6):
                    asks.start_soon(ask, i)
        tg.cancel_scope.cancel()
    assert answers == ["The weather in Paris: sunny, 21°C."] * 6


def test_the_readme_quickstart_runs_as_written_with_its_embedded_worker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTQUEUE_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the default store, kept out of $HOME
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,  # outside the repository, as a user runs it
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "The weather in Paris: sunny, 21°C.\n"), (
        done.stderr
    )
    assert (tmp_path / "state" / "agentqueue" / "sessions.db").is_file()


def test_the_readme_shows_the_quickstart_file_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "examples" / "quickstart.py").read_text()
    body = code[code.index("import anyio") :]
    assert f"```python\n{body}```" in readme
