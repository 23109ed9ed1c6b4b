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

    Up to `concurrency` runner tasks of the owner's task group take turns over the sessions
    that have a job waiting, one job per turn, oldest session first: no job outlives the
    worker, no error vanishes (a job that raises is logged and its session carries on with the
    next job), and a busy worker starts no task per event: a runner goes on to the next
    waiting session, and ends only when none is left.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._tg = task_group
        self._concurrency = concurrency
        self._lanes: dict[str, deque[Job]] = {}
        self._waiting: deque[str] = deque()  # sessions with a job and no runner, oldest first
        self._runners = 0
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
        self._waiting.append(session_id)
        if self._runners < self._concurrency:
            self._runners += 1
            self._tg.start_soon(self._run, name="session lanes")

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

    async def _run(self) -> None:
        try:
            while self._waiting:
                # A session is waiting here at most once, and only while no runner has it:
                # its jobs run one after another, in the order they came.
                session_id = self._waiting.popleft()
                lane = self._lanes[session_id]
                self.running += 1
                try:
                    await lane[0]()
                except Exception:
                    log.exception("job of session %r failed", session_id)
                finally:
                    self.running -= 1
                lane.popleft()
                if lane:
                    self._waiting.append(session_id)  # its next job, after the others' turn
                else:
                    del self._lanes[session_id]
                    if not self._lanes:
                        self._idle.set()
        finally:
            self._runners -= 1
