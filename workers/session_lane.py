"""Session lanes: one event at a time per session, in arrival order; sessions run side by side."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

log = logging.getLogger("agentqueue.worker")

Job = Callable[[], Awaitable[None]]


class SessionLanes:
    """Runs submitted jobs serially per session and concurrently across sessions.

    Every lane is a task of the owner's task group, so no job outlives the worker and no
    error vanishes: a job that raises is logged and its lane carries on with the next job.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._tg = task_group
        self._limit = anyio.Semaphore(concurrency)
        self._lanes: dict[str, deque[Job]] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self.running = 0

    def submit(self, session_id: str, job: Job) -> None:
        """Queue `job` behind the session's earlier jobs."""
        lane = self._lanes.get(session_id)
        if lane is not None:
            lane.append(job)
            return
        self._lanes[session_id] = deque([job])
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._tg.start_soon(self._run, session_id, name=f"lane {session_id}")

    @property
    def sessions(self) -> int:
        """Sessions with queued or running jobs."""
        return len(self._lanes)

    @property
    def queued(self) -> int:
        """Jobs submitted and not finished, over all sessions."""
        return sum(len(lane) for lane in self._lanes.values())

    async def wait_idle(self) -> None:
        """Return once every submitted job has finished."""
        await self._idle.wait()

    async def _run(self, session_id: str) -> None:
        lane = self._lanes[session_id]
        try:
            while lane:
                async with self._limit:
                    self.running += 1
                    try:
                        await lane[0]()
                    except Exception:
                        log.exception("job of session %r failed", session_id)
                    finally:
                        self.running -= 1
                lane.popleft()
        finally:
            del self._lanes[session_id]
            if not self._lanes:
                self._idle.set()
