"""Approvals with an in-process worker on the memory broker: a tool whose approval depends on its
arguments, and a turn whose deadline passes while it waits behind a pause."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.workers.settings import Settings
from agentqueue.workers.toolkit import ToolSpec
from agentqueue.workers.worker import Worker


@contextlib.asynccontextmanager
async def serving(name: str) -> AsyncIterator[Client]:
    """A worker of the approval app in this process on a memory broker, and a client of it."""
    from tests.apps.approvals import app

    settings = Settings.load(broker=f"memory://{name}", store=f"memory://{name}")
    async with settings.open_broker() as broker, anyio.create_task_group() as tg:
        worker = Worker(app, broker, settings.open_store(), settings)
        await tg.start(worker.run)
        async with Client(broker, settings=settings) as client:
            yield client
        worker.stop()


def test_a_tool_refuses_an_approval_setting_that_is_neither_a_bool_nor_a_function() -> None:
    with pytest.raises(ValueError) as caught:
        ToolSpec("pay", print, requires_approval="yes")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "tool pay requires_approval must be True, False or a function of the call's arguments"
        " returning a bool, got 'yes'"
    )
    with pytest.raises(ValueError) as caught:
        ToolSpec("pay", print, requires_approval=True, approval_timeout=0)
    assert str(caught.value) == (
        "tool pay approval_timeout must be a finite number of seconds > 0, or None (the"
        " worker's setting), got 0"
    )


async def test_only_the_calls_the_predicate_picks_wait_for_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTQUEUE_TEST_LOG", str(tmp_path / "effects.log"))
    async with serving("predicate") as client:
        small = await client.call('/tool transfer {"to": "bo", "amount": 5}', session_id="p")
        kinds = []
        with anyio.fail_after(30):
            async for event in client.stream(
                '/tool transfer {"to": "bo", "amount": 500}', session_id="p"
            ):
                kinds.append(event.kind)
                if event.kind == "approval_required":
                    assert event.approval is not None
                    assert event.approval.arguments == {"to": "bo", "amount": 500}
                    await client.approve(event.request_id, session_id="p")
                elif event.terminal:
                    large = event
    assert small.text == "Tool transfer returned: transferred 5 to bo."
    assert large.text == "Tool transfer returned: transferred 500 to bo."
    assert kinds[0] == "approval_required" and kinds[-1] == "final"
    lines = (tmp_path / "effects.log").read_text().splitlines()
    assert lines == ["transfer bo 5", "transfer bo 500"]


async def test_a_turn_whose_deadline_passes_while_it_waits_behind_a_pause_is_answered_timed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTQUEUE_TEST_LOG", str(tmp_path / "effects.log"))
    async with serving("deadline") as client:
        first = await client.submit('/tool pay {"to": "bo", "amount": 1}', session_id="d")
        with anyio.fail_after(30):
            async for event in first.events():
                if event.kind == "approval_required":
                    break
        later = await client.submit("hello", session_id="d", timeout=0.2)
        assert later.envelope.deadline is not None
        await anyio.sleep(max(0.0, later.envelope.deadline - time.time()))  # it expires
        await client.approve(first.id, session_id="d")
        late = await later.result()
    assert late.kind == "timed_out"
    assert late.error is not None
    assert late.error.startswith("deadline passed before the event started (it waited ")
