"""Wait for a condition with a deadline, instead of sleeping for a guessed time."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

POLL = 0.02  # seconds between looks at the condition


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> None:
    """Return once condition() is true; fail naming `what` if it is not within timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        await anyio.sleep(POLL)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Blocking form of wait_for, for tests and helpers that run no event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(POLL)
