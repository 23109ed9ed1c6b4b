"""A caller process drops mid-stream; a new process attaches and gets the rest exactly once.

Real processes on a real broker (RabbitMQ, and MNS through the local MNS server), streams kept
in Redis: a worker, a caller (`agentqueue call --stream`) killed after the first words, and an
attacher (`agentqueue attach ID --after N --json`) that knows only the request id.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
import redis.asyncio as redis
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from agentqueue.protocol import new_id
from tests.apps.streams import HOLD_AFTER
from tests.processes import ROOT, workers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROMPT = "one two three four five six seven"
ANSWER = f"You said: {PROMPT}"


def cli(command: str, broker: str, ns: str, store: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agentqueue.cli",
        command,
        *args,
        "--broker",
        broker,
        "--store",
        store,
        "--namespace",
        ns,
        "--partition-count",
        "2",
        "--tool-partition-count",
        "2",
    ]


async def read_until(stream: TextReceiveStream, done, seen: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Read `stream` into `seen` until `done("".join(seen))`."""
    async for chunk in stream:
        seen.append(chunk)
        if done("".join(seen)):
            return
    raise AssertionError(f"the stream ended before the condition held: {''.join(seen)!r}")


async def following(redis_url: str, timeout: float = 30.0) -> None:
    """Until a Redis client blocks in XREAD: the attacher follows the log live."""
    async with redis.Redis.from_url(redis_url) as r:
        with anyio.fail_after(timeout):
            while not any(c.get("cmd") == "xread" for c in await r.client_list()):
                await anyio.sleep(0.02)


@pytest.fixture(params=["rabbitmq", "mns"])
def broker_url(request: pytest.FixtureRequest) -> str:
    name = "rabbitmq_url" if request.param == "rabbitmq" else "mns_url"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


async def test_a_dropped_caller_is_followed_from_a_new_process_every_delta_once_then_the_final(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    ns, gate = f"at{new_id()[:6]}", tmp_path / "gate"
    store = redis_url
    env = {**os.environ, "AGENTQUEUE_TEST_GATE": str(gate), "AGENTQUEUE_REPLY_GRACE": "1"}
    worker = cli("worker", broker_url, ns, store, "--app", "tests.apps.streams:app", "--no-balance")
    with workers(tuple(worker[4:]), env=env):
        caller: Process = await anyio.open_process(
            cli("call", broker_url, ns, store, PROMPT, "--agent", "gated", "--stream"),
            cwd=ROOT,
            env=env,
        )
        async with caller:
            said: list[str] = []
            with anyio.fail_after(60):
                await read_until(
                    TextReceiveStream(caller.stdout),  # type: ignore[arg-type]
                    lambda text: len(text.split(" ")) > HOLD_AFTER,  # the first words, no more
                    said,
                )
            header: list[str] = []
            await read_until(TextReceiveStream(caller.stderr), lambda t: "\n" in t, header)  # type: ignore[arg-type]
            caller.kill()  # drops, like a crashed backend: no cancel is sent
        request_id = header[0].split()[1]
        attacher: Process = await anyio.open_process(
            cli("attach", broker_url, ns, store, request_id, "--after", str(HOLD_AFTER), "--json"),
            cwd=ROOT,
            env=env,
        )
        async with attacher:
            await following(redis_url)
            gate.touch()  # only now does the worker stream the rest
            lines: list[str] = []
            with anyio.fail_after(60):
                await read_until(
                    TextReceiveStream(attacher.stdout),  # type: ignore[arg-type]
                    lambda text: '"kind":"final"' in text,
                    lines,
                )
            assert await attacher.wait() == 0
    events = [json.loads(line) for line in "".join(lines).splitlines()]
    *deltas, final = events
    assert "".join(said) == "You said: one "
    assert [e["seq"] for e in events] == list(range(HOLD_AFTER + 1, HOLD_AFTER + 2 + len(deltas)))
    assert {e["kind"] for e in deltas} == {"delta"} and final["kind"] == "final"
    assert "".join(said) + "".join(d["text"] for d in deltas) == final["text"] == ANSWER
