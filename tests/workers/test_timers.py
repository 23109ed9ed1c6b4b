"""Timers in every store backend are claimed by one worker at a time and survive its death."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentqueue.protocol import new_id
from agentqueue.workers.timers import (
    RETRY_AFTER,
    Fired,
    Timer,
    Timers,
    TimerStore,
    open_timer_store,
)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.broker)])
async def timer_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "memory":
        yield f"memory://{new_id()[:8]}"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sessions.db"
    else:
        yield request.getfixturevalue("redis_url")


def _open(url: str, ns: str) -> TimerStore:
    return open_timer_store(url, ns)


async def test_a_due_timer_fires_once_however_many_workers_look_for_it(timer_url: str) -> None:
    ns = f"t{new_id()[:6]}"
    fired: list[tuple[str, str]] = []
    runners = []
    for name in ("a", "b", "c"):

        async def action(timer: Timer, name: str = name) -> Fired:
            fired.append((timer.key, name))
            return None

        runner = Timers(_open(timer_url, ns), owner=name)
        runner.register("ping", action)
        runners.append(runner)
    now = time.time()
    assert await runners[0].schedule("k1", "ping", now - 1, b"x")
    assert not await runners[1].schedule("k1", "ping", now - 1, b"y")  # one timer per key
    assert await runners[0].schedule("later", "ping", now + 3600)
    async with anyio.create_task_group() as tg:
        for runner in runners:
            tg.start_soon(runner.fire_due)
    assert [key for key, _ in fired] == ["k1"]
    assert await runners[0].store.get("k1") is None  # done: deleted
    assert [t.key for t in await runners[0].store.list()] == ["later"]
    for runner in runners:
        await runner.close()


async def test_a_timer_whose_firing_worker_died_fires_again_and_the_dead_claim_is_fenced(
    timer_url: str,
) -> None:
    ns = f"t{new_id()[:6]}"
    dead, alive = _open(timer_url, ns), _open(timer_url, ns)
    now = time.time()
    await dead.put(Timer("k", "ping", now - 1, b"p"))
    (claimed,) = await dead.claim(["ping"], now, ttl=5)  # then the worker "dies"
    assert await alive.claim(["ping"], now + 1, ttl=5) == []  # the claim still holds
    (again,) = await alive.claim(["ping"], now + 6, ttl=5)  # it expired: taken over
    assert again.token > claimed.token and again.payload == b"p"
    assert not await dead.complete(claimed, None, b"")  # the stale claim changes nothing
    assert await alive.complete(again, now + 60, b"next")  # recurring: moved on
    moved = await alive.get("k")
    assert moved is not None and (moved.due, moved.payload) == (now + 60, b"next")
    assert await alive.claim(["ping"], now + 7, ttl=5) == []
    assert await alive.cancel("k") and not await alive.cancel("k")
    await dead.close()
    await alive.close()


async def test_a_timer_of_a_kind_no_worker_fires_waits_and_a_failed_action_fires_again(
    timer_url: str,
) -> None:
    ns = f"t{new_id()[:6]}"
    calls = 0

    async def flaky(timer: Timer) -> Fired:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("broker away")
        return None

    runner = Timers(_open(timer_url, ns), owner="w")
    runner.register("flaky", flaky)
    await runner.schedule("other", "approval-timeout", time.time() - 1)
    await runner.schedule("f", "flaky", time.time() - 1)
    assert await runner.fire_due() == 0  # failed: given back, tried again a second later
    assert await runner.fire_due() == 0
    assert await runner.fire_due(now=time.time() + RETRY_AFTER + 0.1) == 1
    assert calls == 2
    assert [t.key for t in await runner.store.list()] == ["other"]
    await runner.close()
