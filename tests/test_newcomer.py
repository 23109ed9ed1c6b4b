"""A new user's first hour, scripted: their own app in a folder outside the repository, a
private RabbitMQ from `agentqueue local rabbitmq`, and every command the README names, each
exiting as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.broker

AGENTQUEUE = str(Path(sys.executable).parent / "agentqueue")  # the console script setup installs

APP = '''
import asyncio
from pathlib import Path

from agentqueue import AgentContext, App

app = App("newcomer")
OUTAGE = Path(__file__).parent / "outage"  # while it exists, the agent cannot start


@app.tool("explode")
async def explode() -> str:
    """Always fails."""
    raise ValueError("the lab is on fire")


@app.tool("nap")
async def nap(seconds: float) -> str:
    """Sleeps, then answers."""
    await asyncio.sleep(seconds)
    return "rested"


@app.agent("helper")
def helper(ctx: AgentContext):
    if OUTAGE.exists():
        raise RuntimeError("vector store unreachable")
    return ctx.build_agent("You help.")
'''

SERVE = """
from agentqueue import run_worker

from myapp import app

run_worker(app, role="tools")  # the in-process worker API: serves until SIGTERM
"""


class Background:
    """A long-running command; its stdout and stderr lines are collected as they come."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, lines: list[str], timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            if exited:  # everything it wrote is read once its pipes close
                for reader in self._readers:
                    reader.join(10)
            found = [line for line in lines if text in line]
            if found:
                return found[0]
            if exited:
                break
            time.sleep(0.05)  # polling the collected lines, not waiting for an event
        raise AssertionError(f"no {text!r} from {self.proc.args}:\n" + "\n".join(self.err[-30:]))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@contextmanager
def background(argv: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Background]:
    started = Background(argv, cwd, env)
    try:
        yield started
    finally:
        started.stop()


def test_a_newcomer_runs_every_documented_command_against_their_own_app(tmp_path: Path) -> None:
    home = tmp_path / "project"
    home.mkdir()
    (home / "myapp.py").write_text(textwrap.dedent(APP))
    (home / "serve.py").write_text(textwrap.dedent(SERVE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTQUEUE_")}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": str(home)}

    def agentqueue(
        *args: str, code: int = 0, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [AGENTQUEUE, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        return done

    with background([AGENTQUEUE, "local", "rabbitmq", "--port", "0"], home, env) as node:
        setting = node.wait_for("AGENTQUEUE_BROKER=", node.out)
        env["AGENTQUEUE_BROKER"] = setting.partition("=")[2]
        env |= {"AGENTQUEUE_NAMESPACE": "firsthour", "AGENTQUEUE_MAX_ATTEMPTS": "1"}
        env |= {"AGENTQUEUE_SHUTDOWN_GRACE": "2", "AGENTQUEUE_PARTITIONS": "4"}
        env["AGENTQUEUE_TOOL_PARTITIONS"] = "2"
        agents = [AGENTQUEUE, "worker", "--app", "myapp:app", "--role", "agents"]
        with (
            background(agents, home, env) as worker,
            background([sys.executable, "serve.py"], home, env) as tools,
        ):
            worker.wait_for(" serving ", worker.err)
            tools.wait_for(" serving ", tools.err)

            # Two turns of one session: the second remembers the first.
            first = agentqueue("call", "My name is Ada.", "--session", "s1")
            assert first.stdout == "Nice to meet you, Ada. I'll remember that.\n"
            assert first.stderr.startswith("request ") and " session s1" in first.stderr
            assert agentqueue("call", "What is my name?", "--session", "s1").stdout == (
                "Your name is Ada.\n"
            )
            streamed = agentqueue("call", "My name is Bo.", "--session", "s2", "--stream")
            assert streamed.stdout == "Nice to meet you, Bo. I'll remember that.\n"

            # A failing tool: the agent explains it; the tool worker's log has the traceback.
            failed_tool = agentqueue("call", "/tool explode {}", "--session", "s3")
            assert failed_tool.stdout == (
                "The tool explode failed: tool explode failed: ValueError: the lab is on fire.\n"
            )
            tools.wait_for("ValueError: the lab is on fire", tools.err)

            # A dead letter: looked at, its cause fixed, replayed; the answer is printed here.
            (home / "outage").touch()
            dead = agentqueue("call", "My name is Cy.", "--session", "s4", code=1)
            assert dead.stderr.endswith(
                "agentqueue call: failed after 1 attempts: RuntimeError: vector store unreachable\n"
            )
            request_id = dead.stderr.split()[1]
            listed = agentqueue("dlq", "list").stdout
            assert request_id in listed and "vector store unreachable" in listed
            shown = agentqueue("dlq", "show", request_id).stdout
            assert shown.startswith("reason:   failed after 1 attempts: RuntimeError")
            (home / "outage").unlink()
            replayed = agentqueue("dlq", "replay", request_id).stdout.splitlines()
            assert replayed[0].startswith(f"replayed {request_id} to firsthour-requests-")
            assert replayed[1:] == [
                "1 replayed; waiting for their answers",
                f"{replayed[0].split()[-1]}: final: Nice to meet you, Cy. I'll remember that.",
            ]
            # The replayed answer is kept: fetched again by its new id from any shell.
            fetched = agentqueue("attach", replayed[0].split()[-1])
            assert fetched.stdout == "Nice to meet you, Cy. I'll remember that.\n"
            # The session goes on at once: its next turn is not held up by the replay.
            assert agentqueue("call", "What is my name?", "--session", "s4", "--timeout", "20")

            (home / "outage").touch()
            agentqueue("call", "hello", "--session", "s5", code=1)
            refused = agentqueue("dlq", "purge", code=1)
            assert refused.stderr == (
                "agentqueue dlq: dlq purge deletes dead letters for good: name an envelope id or"
                " list index, or `all` to purge every one\n"
            )
            assert agentqueue("dlq", "purge", "all").stdout.endswith("1 purged\n")
            assert agentqueue("dlq", "list").stdout == "firsthour-dead-letters is empty\n"
            (home / "outage").unlink()

            # Cancel by the id `call` printed.
            slow = [AGENTQUEUE, "call", '/tool nap {"seconds": 8}', "--session", "s6"]
            with background(slow, home, env) as call:
                line = call.wait_for("request ", call.err)
                asked = agentqueue("cancel", line.split()[1], "--session", "s6")
                assert asked.stdout == f"cancel sent for {line.split()[1]}\n"
                assert call.proc.wait(30) == 1
                assert call.wait_for("agentqueue call:", call.err) == (
                    "agentqueue call: request cancelled"
                )

            status = agentqueue("status").stdout
            assert "firsthour-requests-3 " in status and "STUCK" not in status
        assert worker.proc.returncode == 0 and tools.proc.returncode == 0, tools.err[-20:]

    # A batch with no broker: the app is served in this one process.
    del env["AGENTQUEUE_BROKER"]
    request = {"session_id": "b1", "input": [{"role": "user", "content": [{"type": "text"}]}]}
    lines = []
    for i, text in enumerate(["My name is Di.", "What is my name?"]):
        request["input"][0]["content"][0]["text"] = text  # type: ignore[index]
        lines.append(json.dumps({**request, "id": f"item-{i}"}))
    (home / "in.jsonl").write_text("\n".join(lines) + "\n")
    agentqueue("batch", "run", "in.jsonl", "-o", "out.jsonl", "--app", "myapp:app")
    results = [json.loads(line) for line in (home / "out.jsonl").read_text().splitlines()]
    assert [(r["status"], r["text"]) for r in results] == [
        ("final", "Nice to meet you, Di. I'll remember that."),
        ("final", "Your name is Di."),
    ]
