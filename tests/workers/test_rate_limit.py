"""The shared model budget on every backend: a sliding window of grants, token charges
corrected to real usage, a 429's pause for everyone, and the usage counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from agentqueue.protocol import new_id
from agentqueue.workers.errors import ModelConfigError
from agentqueue.workers.rate_limit import (
    LimitBackend,
    ModelLimiter,
    ModelUsage,
    RateLimit,
)
from agentqueue.workers.rate_limit_stores import open_limit_backend


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.broker)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{new_id()[:8]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def backends(url: str) -> AsyncIterator[tuple[LimitBackend, LimitBackend]]:
    """Two connections to one store, as two workers hold them."""
    first, second = open_limit_backend(url), open_limit_backend(url)
    yield first, second
    await first.close()
    await second.close()


def test_a_limit_is_read_from_its_setting_and_bad_ones_are_refused() -> None:
    assert RateLimit.parse("requests=500, tokens=200000, window=60s") == RateLimit(500, 200000, 60)
    assert RateLimit.parse("requests=2") == RateLimit(requests=2, window=60, slack=0.25)
    assert RateLimit.parse("requests=2,window=1,slack=0").span == 1
    for text, error in [
        ("requests=5,window=0.5", "rate limit window must be at least 1 s, got 0.5"),
        ("window=10", "a rate limit needs requests=N, tokens=N or both"),
        (
            "requests=5,window=1,slack=2",
            "rate limit slack must be between 0 and the window (1 s), got 2",
        ),
        (
            "rpm=5",
            "AGENTQUEUE_RATE_LIMIT='rpm=5': cannot read 'rpm=5';"
            ' write it like "requests=500,tokens=200000,window=60"',
        ),
    ]:
        with pytest.raises(ModelConfigError) as caught:
            RateLimit.parse(text)
        assert str(caught.value) == error


async def test_grants_are_paced_a_window_over_the_limit_apart_for_every_worker(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    a, b = backends
    key, limit = f"ns\x1fopenai\x1fm-{new_id()[:6]}", RateLimit(requests=4, window=1)
    assert await a.try_acquire(key, "g0", 0, limit) == 0
    for n, backend in enumerate([b, a, b], start=1):
        wait = await backend.try_acquire(key, f"g{n}", 0, limit)
        # Not at once: a quarter of the window (and its slack) after the last grant.
        assert 0 < wait <= limit.span / 4
        await anyio.sleep(wait)
        while (wait := await backend.try_acquire(key, f"g{n}", 0, limit)) > 0:
            await anyio.sleep(wait)  # the sleep may end a hair early on the store's clock
    # Four grants in the window: the next waits for the first to leave it.
    assert await a.try_acquire(key, "g4", 0, limit) > 0


async def test_the_token_budget_charges_the_estimate_then_the_real_usage(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    a, b = backends
    key, limit = f"ns\x1fopenai\x1fm-{new_id()[:6]}", RateLimit(tokens=100, window=5)
    assert await a.try_acquire(key, "big", 60, limit) == 0
    assert await b.try_acquire(key, "next", 50, limit) > 0  # 60 + 50 > 100
    await a.settle(key, "big", 30)  # the call used less than estimated
    assert await b.try_acquire(key, "next", 50, limit) == 0
    assert await b.try_acquire(key, "more", 30, limit) > 0


async def test_a_429_pauses_the_budget_for_every_worker(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    a, b = backends
    model = f"m-{new_id()[:6]}"
    limiter_a = ModelLimiter(a, "ns", "openai", model, RateLimit(requests=100, window=1))
    limiter_b = ModelLimiter(b, "ns", "openai", model, RateLimit(requests=100, window=1))
    await limiter_a.refused(retry_after=1.0)
    assert 0 < await b.try_acquire(limiter_b.key, "g", 0, RateLimit(requests=100, window=1)) <= 1
    with anyio.fail_after(10):
        grant = await limiter_b.acquire(0)
    assert grant.waited > 0


async def test_callers_over_the_limit_wait_their_turn_instead_of_failing(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    model, limit = f"m-{new_id()[:6]}", RateLimit(requests=2, window=1)
    limiters = [ModelLimiter(b, "ns", "openai", model, limit) for b in backends]
    waited: list[float] = []

    async def call(n: int) -> None:
        grant = await limiters[n % 2].acquire(10)
        waited.append(grant.waited)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(call, n)
    assert len(waited) == 5
    assert sum(1 for w in waited if w == 0) == 1  # the first; the rest waited their turn


async def test_usage_counters_add_up_per_model_within_the_namespace(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    a, b = backends
    ns = f"ns-{new_id()[:6]}"
    await a.record(ns, "openai", "big", 100, 20)
    await b.record(ns, "openai", "big", 50, 5)
    await b.record(ns, "dashscope", "small", 3, 1)
    await a.record(f"{ns}-other", "openai", "big", 999, 999)
    assert await a.usage(ns, 60) == [
        ModelUsage("openai", "big", calls=2, prompt_tokens=150, completion_tokens=25),
        ModelUsage("dashscope", "small", calls=1, prompt_tokens=3, completion_tokens=1),
    ]
    assert await b.usage(ns, 7200) == await a.usage(ns, 60)  # minute counters past an hour


async def test_a_caller_waiting_for_room_is_cancelled_at_once(
    backends: tuple[LimitBackend, LimitBackend],
) -> None:
    limiter = ModelLimiter(backends[0], "ns", "openai", f"m-{new_id()[:6]}", RateLimit(1, None, 1))
    await limiter.refused(retry_after=60)  # no room for a minute
    with anyio.fail_after(10):  # a swallowed cancellation would wait the whole minute
        with anyio.move_on_after(0.3) as scope:
            await limiter.acquire(0)
    assert scope.cancelled_caught
