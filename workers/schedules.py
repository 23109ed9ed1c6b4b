"""Named recurring schedules: a timer per schedule that publishes one agent request per tick.

A schedule is one timer (`schedule:<name>`, see `workers/timers.py`) whose payload is the
schedule and whose due time is its next tick. Whichever worker claims the timer when it is due
(holding its claim lease) publishes the tick's request and moves the timer to the next tick in
the same fenced step. The request's id is derived from the schedule and the tick, so a tick
fired twice — a worker dying after publishing, before moving the timer — is one turn: the dedup
stage answers the second copy from the stored result. Each tick runs exactly once.

Ticks missed while no worker ran (the timer is found due more than one tick ago, or late): the
`schedule_missed` setting decides — `once` runs them as one turn (for the latest of them),
`skip` runs none of those more than `schedule_grace` seconds late.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.topology import Topology
from agentqueue.protocol.codec import encode
from agentqueue.protocol.messages import AgentRequest, Envelope, user_message
from agentqueue.workers.schedule_spec import Every, Ticks, parse_every, ticks
from agentqueue.workers.timers import Action, Fired, Timer, Timers, TimerStore, open_timer_store

log = logging.getLogger("agentqueue.schedules")

KIND = "schedule"  # the timer kind of a schedule
PREFIX = "schedule:"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class Schedule(msgspec.Struct, omit_defaults=True, frozen=True):
    """A named recurring request: `prompt` to `agent` in `session_id`, at each tick."""

    name: str
    session_id: str
    prompt: str
    cron: str | None = None  # UTC; five fields, or six with seconds first
    every: float | None = None  # seconds
    agent: str | None = None
    user_id: str | None = None

    @property
    def ticks(self) -> Ticks:
        """When it ticks."""
        return ticks(self.cron, self.every)

    def request_id(self, tick: float) -> str:
        """The id of the request of one tick: the same on every worker, so a tick runs once."""
        return f"schedule-{self.name}-{round(tick * 1000)}"


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule and when it fires next (unix seconds)."""

    schedule: Schedule
    next_at: float


_decoder = msgspec.json.Decoder(Schedule)


def _check_name(name: str) -> None:
    if not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
        raise ValueError(f"schedule name {name!r} must be 1-100 letters, digits, '-', '_' or '.'")


class Schedules:
    """Add, list and remove the schedules of a namespace (in its session store's backend)."""

    def __init__(self, timers: TimerStore) -> None:
        self.timers = timers

    @classmethod
    def open(cls, store_url: str, namespace: str) -> Schedules:
        """The schedules kept with the session store at `store_url`."""
        return cls(open_timer_store(store_url, namespace))

    async def add(
        self,
        name: str,
        prompt: str,
        *,
        session_id: str,
        cron: str | None = None,
        every: float | str | None = None,
        agent: str | None = None,
        user_id: str | None = None,
        replace: bool = False,
    ) -> ScheduleInfo:
        """Add a schedule (`cron` or `every`, like `5s`); an existing name needs `replace`."""
        _check_name(name)
        if isinstance(every, str):
            every = parse_every(every)
        schedule = Schedule(name, session_id, prompt, cron, every, agent, user_id)
        next_at = schedule.ticks.next_after(time.time())
        timer = Timer(PREFIX + name, KIND, next_at, msgspec.json.encode(schedule))
        if not await self.timers.put(timer, replace=replace):
            raise ValueError(
                f"schedule {name!r} exists already; remove it first or replace it"
                " (replace=True, `agentqueue schedule add --replace`)"
            )
        return ScheduleInfo(schedule, next_at)

    async def list(self) -> list[ScheduleInfo]:
        """Every schedule, the next to fire first."""
        timers = await self.timers.list(PREFIX)
        return [ScheduleInfo(_decoder.decode(t.payload), t.due) for t in timers]

    async def remove(self, name: str) -> bool:
        """Delete a schedule; False when there is none of that name."""
        return await self.timers.cancel(PREFIX + name)

    async def close(self) -> None:
        """Close the backend connection."""
        await self.timers.close()


def latest_tick(ticks: Ticks, due: float, now: float) -> float:
    """The last tick at or before `now`, given that `due` (<= now) is one."""
    if isinstance(ticks, Every):
        return max(due, math.floor(now / ticks.seconds) * ticks.seconds)
    # Walk the ticks of a window before `now`, widening it until it holds one: a dense cron
    # is found in the first hour, a sparse one takes few steps in a wide window.
    for window in (3600.0, 86400.0, 40 * 86400.0, math.inf):
        start = max(due, now - window)
        latest, following = start, ticks.next_after(start)
        while following <= now:
            latest, following = following, ticks.next_after(following)
        if latest > start or start == due:
            return latest
    return due  # unreachable: the last window starts at `due`


def tick_to_run(schedule: Schedule, due: float, now: float, missed: str, grace: float) -> float:
    """The tick to run now of those due since `due` (or nan: none), by the missed-tick policy."""
    latest = latest_tick(schedule.ticks, due, now)  # every missed tick collapses into it
    if missed == "skip" and now - latest > grace:
        return float("nan")
    return latest


def fire_schedules(broker: Broker, topology: Topology, *, missed: str, grace: float) -> Action:
    """The timer action that publishes a schedule's request for its tick."""

    async def fire(timer: Timer) -> Fired:
        schedule = _decoder.decode(timer.payload)
        now = time.time()
        tick = tick_to_run(schedule, timer.due, now, missed, grace)
        if tick == tick:  # not nan
            request_id = schedule.request_id(tick)
            body = AgentRequest(
                input=[user_message(schedule.prompt)],
                agent=schedule.agent,
                session_id=schedule.session_id,
                user_id=schedule.user_id,
                id=request_id,
            )
            envelope = Envelope(
                id=request_id,
                session_id=schedule.session_id,
                correlation_id=request_id,
                body=body,
                created_at=now,
            )
            await broker.publish(topology.route(envelope), encode(envelope))
            log.info("schedule %s fired its %.3f tick as %s", schedule.name, tick, request_id)
        else:
            log.info("schedule %s skipped ticks missed since %.3f", schedule.name, timer.due)
        return schedule.ticks.next_after(now)

    return fire


def register(
    timers: Timers, broker: Broker, topology: Topology, *, missed: str, grace: float
) -> None:
    """Fire the namespace's schedules on `timers`."""
    timers.register(KIND, fire_schedules(broker, topology, missed=missed, grace=grace))
