"""Run one tool function under its timeout: the one runner for local and tool-worker calls.

An async tool is awaited and cancelled at its timeout. A sync tool runs in a daemon thread of
its own so it can block neither the event loop nor the timeout. Python cannot kill a thread:
at the timeout the caller gets its `timed out` answer at once and the thread is abandoned,
running on until the function returns (a `time.sleep(60)` holds its thread for 60 s). So that
abandoned threads cannot pile up and hold the worker, at most `SYNC_TOOL_THREADS` sync tools
run at a time, abandoned ones included; a call beyond that waits for a slot under its own
timeout, and one that timed out while waiting never runs. Being daemons, abandoned threads
never keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any

import anyio

SYNC_TOOL_THREADS = 32
"""Sync tool calls running at once in a process, abandoned ones (past their timeout) included."""


class ToolThreads:
    """Daemon threads for sync tools, at most `limit` running, abandoned ones included."""

    def __init__(self, limit: int = SYNC_TOOL_THREADS) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.running = 0  # threads inside a tool function now, abandoned ones included

    async def run(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """`func(**kwargs)` in a thread with this task's context variables; cancel abandons it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        abandoned = threading.Event()
        context = contextvars.copy_context()

        def settle(ok: bool, value: Any) -> None:
            if done.done():
                return
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        def work() -> None:
            self._slots.acquire()
            try:
                if abandoned.is_set():  # its caller gave up while it waited for a slot
                    return
                with self._lock:
                    self.running += 1
                try:
                    outcome = (True, context.run(func, **kwargs))
                except BaseException as exc:  # delivered to the caller, raised there
                    outcome = (False, exc)
                finally:
                    with self._lock:
                        self.running -= 1
            finally:
                self._slots.release()
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, *outcome)

        name = getattr(func, "__name__", "tool")
        threading.Thread(target=work, name=f"sync tool {name}", daemon=True).start()
        try:
            return await done
        finally:
            abandoned.set()


threads = ToolThreads()
"""The process's threads for sync tools."""


async def run_tool(func: Callable[..., Any], kwargs: dict[str, Any], timeout: float | None) -> Any:
    """`func(**kwargs)`, awaited if it returns an awaitable; TimeoutError after `timeout` s."""
    with anyio.fail_after(timeout):
        if inspect.iscoroutinefunction(func):
            return await func(**kwargs)
        result = await threads.run(func, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
