"""A tool's own timeout is the ceiling; tools declare what to retry; PermanentError dead-letters."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from agentqueue import App
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol import (
    Envelope,
    ToolCall,
    ToolResult,
    decode_dead_letter,
    encode,
    new_id,
)
from agentqueue.workers.errors import PermanentError
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.tool_handler import effective_timeout
from agentqueue.workers.tool_runner import ToolThreads, threads
from agentqueue.workers.toolkit import ToolSpec
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

calls: dict[str, int] = {}
app = App("limits")


@app.tool("slow", timeout=0.2)
async def slow() -> str:
    """Never finishes on its own (test tool)."""
    calls["slow"] = calls.get("slow", 0) + 1
    await anyio.sleep_forever()
    return "unreachable"


released = threading.Event()


@app.tool("blocking", timeout=0.3)
def blocking() -> str:
    """Blocks its thread for a minute unless the test lets it go (test tool)."""
    calls["blocking"] = calls.get("blocking", 0) + 1
    released.wait(60)
    return "unreachable"


@app.tool("quick")
def quick() -> str:
    """A sync tool that answers at once (test tool)."""
    return "quick answer"


@app.tool("flaky", retry_on=(ConnectionError,))
async def flaky(fail_times: int) -> str:
    """Fails with a transient error `fail_times` times, then answers (test tool)."""
    calls["flaky"] = calls.get("flaky", 0) + 1
    if calls["flaky"] <= fail_times:
        raise ConnectionError("vector store unreachable")
    return f"answered on call {calls['flaky']}"


@app.tool("doomed", retry_on=(ConnectionError,))
async def doomed() -> str:
    """Fails for good (test tool)."""
    calls["doomed"] = calls.get("doomed", 0) + 1
    raise PermanentError("account 42 is closed; not retrying")


@app.tool("broken")
async def broken() -> str:
    """Fails with an error it did not declare transient (test tool)."""
    calls["broken"] = calls.get("broken", 0) + 1
    raise ValueError("bad input")


class Tools:
    def __init__(self, broker: MemoryBroker, topology: Topology, router: ReplyRouter) -> None:
        self.broker, self.topology, self.router = broker, topology, router

    async def call(self, name: str, arguments: dict | None = None, **call: object) -> ToolResult:
        """Send a ToolCall as it is (no deadline, the given timeout) and await its result."""
        call_id = new_id()
        envelope = Envelope(
            id=call_id,
            session_id=f"s-{call_id[:6]}",
            correlation_id=call_id,
            reply_to=self.router.queue,
            body=ToolCall(name=name, arguments=arguments or {}, call_id=call_id, **call),  # type: ignore[arg-type]
            created_at=time.time(),
        )
        inbox = self.router.expect(call_id)
        await self.broker.publish(self.topology.route(envelope), encode(envelope))
        with anyio.fail_after(20):
            reply = await inbox.get()
        assert isinstance(reply.body, ToolResult)
        return reply.body

    async def unacked(self, name: str) -> int | None:
        queue = self.topology.route(Envelope(id="x", session_id="x", body=ToolCall(name=name)))
        return (await self.broker.stats(queue)).unacked

    async def dead_letters(self) -> list[str]:
        reasons = []
        while (dead := await self.broker.get(self.topology.dead_letter_queue)) is not None:
            reasons.append(decode_dead_letter(dead.body).reason)
            await dead.ack()
        return reasons


@asynccontextmanager
async def tools() -> AsyncIterator[Tools]:
    calls.clear()
    topology = Topology(namespace=f"lim{new_id()[:6]}", partitions=1, tool_partitions=1)
    async with (
        MemoryBroker(f"memory://lim-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(topology, max_attempts=3, retry_base_delay=0.01),
        )
        await tg.start(worker.run)
        queue = topology.reply_queue("limits")
        await broker.declare_reply_queue(queue)
        router = ReplyRouter(broker, queue)
        await tg.start(router.run)
        yield Tools(broker, topology, router)
        worker.stop()
        tg.cancel_scope.cancel()


async def test_a_callers_huge_timeout_does_not_lift_the_tools_own_ceiling() -> None:
    async with tools() as t:
        # The finding: ToolCall.timeout overrode the tool's own limit; 1e300 ran for ever.
        result = await t.call("slow", timeout=1e300)
        assert (result.ok, result.output) == (False, "tool slow timed out after 0.2 s")
        shorter = await t.call("slow", timeout=0.05)
        assert shorter.output == "tool slow timed out after 0.05 s"  # a caller may shorten it


@pytest.mark.parametrize("timeout", [-1.0, 0.0, -1e300])
async def test_a_timeout_that_is_not_a_positive_finite_number_is_refused_and_never_runs(
    timeout: float,
) -> None:
    async with tools() as t:
        result = await t.call("slow", timeout=timeout)
        reason = (
            f"tool call timeout {timeout!r} for tool 'slow' refused: give a finite number of"
            " seconds above 0 (the tool's own limit, 0.2 s, is the most it gets), or none"
        )
        assert (result.ok, result.output) == (False, reason)
        assert await t.dead_letters() == [reason]
        assert "slow" not in calls


@pytest.mark.parametrize("timeout", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_timeout_is_refused_where_json_cannot_already_refuse_it(
    timeout: float,
) -> None:
    # On the wire JSON has no NaN and 1e999 is refused as out of range when decoded.
    with pytest.raises(PermanentError) as raised:
        effective_timeout("slow", timeout, 0.2)
    assert str(raised.value) == (
        f"tool call timeout {timeout!r} for tool 'slow' refused: give a finite number of"
        " seconds above 0 (the tool's own limit, 0.2 s, is the most it gets), or none"
    )
    assert effective_timeout("slow", 1e300, None) == 1e300  # no ceiling: the caller's, finite
    assert effective_timeout("slow", None, 0.2) == 0.2


async def test_a_transient_error_the_tool_declares_is_retried_until_it_answers() -> None:
    async with tools() as t:
        # The finding: tool exceptions were never retried.
        result = await t.call("flaky", {"fail_times": 2})
        assert (result.ok, result.output) == (True, "answered on call 3")
        assert calls["flaky"] == 3
        assert await t.dead_letters() == []


async def test_a_transient_error_that_outlasts_the_attempts_is_dead_lettered_with_it() -> None:
    async with tools() as t:
        result = await t.call("flaky", {"fail_times": 99})
        reason = "failed after 3 attempts: ConnectionError: vector store unreachable"
        assert (result.ok, result.output) == (False, reason)
        assert calls["flaky"] == 3
        assert await t.dead_letters() == [reason]


async def test_permanent_error_from_a_tool_dead_letters_it_at_once() -> None:
    async with tools() as t:
        # The finding: PermanentError became an ok=False result, never a dead letter.
        result = await t.call("doomed")
        assert (result.ok, result.output) == (False, "account 42 is closed; not retrying")
        assert calls["doomed"] == 1
        assert await t.dead_letters() == ["account 42 is closed; not retrying"]


async def test_an_error_the_tool_did_not_declare_is_its_failed_result_at_once() -> None:
    async with tools() as t:
        result = await t.call("broken")
        assert (result.ok, result.output) == (False, "tool broken failed: ValueError: bad input")
        assert calls["broken"] == 1
        assert await t.dead_letters() == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        (
            {"timeout": float("inf")},
            "tool t timeout must be a finite number of seconds > 0, or None, got inf",
        ),
        (
            {"timeout": float("nan")},
            "tool t timeout must be a finite number of seconds > 0, or None, got nan",
        ),
        (
            {"retry_on": ConnectionError},
            "tool t retry_on must be a tuple of exception classes, got <class 'ConnectionError'>",
        ),
        (
            {"retry_on": (ConnectionError,), "remote": False},
            "tool t has retry_on but runs in the agent's process (remote=False): retries are"
            " made by tool workers; make it remote=True or drop retry_on",
        ),
    ],
)
def test_a_tool_spec_refuses_limits_it_cannot_keep(spec: dict, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        ToolSpec(name="t", func=slow, **{"remote": True, **spec})
    assert str(raised.value) == error


async def wait_until(condition: object) -> None:
    """Wait (20 s at most) until `condition()` is true."""
    with anyio.fail_after(20):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_a_blocking_sync_tool_is_answered_at_its_timeout_and_the_worker_serves_on() -> None:
    released.clear()
    async with tools() as t:
        # The finding: the thread could not be cancelled, so the answer waited the full minute
        # (past `call`'s 20 s deadline) and the worker's slot with it.
        result = await t.call("blocking")
        assert (result.ok, result.output) == (False, "tool blocking timed out after 0.3 s")
        assert (await t.call("quick")).output == "quick answer"
        assert await t.unacked("blocking") == 0
        assert await t.dead_letters() == []
        # A thread cannot be killed: the abandoned one runs on, counted against the limit.
        assert threads.running == 1
        released.set()
        await wait_until(lambda: threads.running == 0)


async def test_abandoned_sync_tools_use_up_the_thread_limit_and_a_call_that_waited_never_runs() -> (
    None
):
    limited, release, ran = ToolThreads(limit=1), threading.Event(), []

    def record(item: str) -> None:
        ran.append(item)

    with pytest.raises(TimeoutError), anyio.fail_after(0.1):
        await limited.run(release.wait, {"timeout": 60})
    assert limited.running == 1
    with pytest.raises(TimeoutError), anyio.fail_after(0.1):
        await limited.run(record, {"item": "waited"})  # no slot: times out waiting
    release.set()
    await wait_until(lambda: not [t for t in threading.enumerate() if t.name == "sync tool record"])
    assert (ran, limited.running) == ([], 0)
    assert await limited.run(record, {"item": "next"}) is None
    assert ran == ["next"]
