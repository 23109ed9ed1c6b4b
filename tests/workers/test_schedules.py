"""Schedules tick on time, once per tick, and treat ticks missed while no worker ran by policy."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from agentqueue import Schedules
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from agentqueue.workers.agent_handler import import_agentscope
from agentqueue.workers.schedule_spec import Cron, Every
from agentqueue.workers.schedules import Schedule, tick_to_run
from tests.apps.ticks import RUNS, serving


def test_a_cron_with_a_seconds_field_and_a_period_tick_where_every_worker_agrees() -> None:
    at = datetime(2026, 12, 2, 8, 59, 30, tzinfo=UTC).timestamp()
    daily = Cron.parse("0 9 * * *")
    assert daily.next_after(at) == datetime(2026, 12, 2, 9, 0, tzinfo=UTC).timestamp()
    assert Cron.parse("*/2 * * * * *").next_after(at) == at + 2
    assert Cron.parse("0 0 * * 7").next_after(at) == datetime(2026, 12, 6, tzinfo=UTC).timestamp()
    assert Every(2).next_after(10.0) == 12.0 and Every(2).next_after(10.5) == 12.0
    with pytest.raises(ValueError) as refused:
        Cron.parse("0 9 * *")
    assert str(refused.value) == (
        "cron '0 9 * *' has 4 fields; give five (minute hour day month weekday) or six"
        " (second first), e.g. '0 9 * * *' or '*/2 * * * * *'"
    )


def test_missed_ticks_run_once_as_the_latest_or_are_skipped_past_the_grace() -> None:
    every = Schedule("s", "sess", "go", every=10.0)
    # Due at 100; a worker looks at 134.5: ticks 100, 110, 120, 130 were missed.
    assert tick_to_run(every, 100.0, 134.5, "once", grace=5.0) == 130.0
    assert math.isnan(tick_to_run(every, 100.0, 135.5, "skip", grace=5.0))
    assert tick_to_run(every, 100.0, 134.5, "skip", grace=5.0) == 130.0  # late within grace
    assert tick_to_run(every, 100.0, 100.2, "skip", grace=5.0) == 100.0  # on time
    each_second = Schedule("c", "sess", "go", cron="* * * * * *")
    day = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    assert tick_to_run(each_second, day, day + 3 * 86400 + 0.5, "once", grace=5.0) == (
        day + 3 * 86400
    )  # three days of missed ticks, found without walking every one
    daily = Schedule("d", "sess", "go", cron="0 9 * * *")
    nine = datetime(2026, 12, 2, 9, tzinfo=UTC).timestamp()
    assert tick_to_run(daily, nine, nine + 2.5 * 86400, "once", grace=5.0) == nine + 2 * 86400


def ticks_run(name: str) -> list[float]:
    prefix = f"schedule-{name}-"
    return sorted(int(rid[len(prefix) :]) / 1000 for rid, _, _ in RUNS if rid.startswith(prefix))


async def run_after_an_outage(missed: str, tmp_path: Path) -> tuple[list[float], float]:
    """A 1 s schedule whose ticks fall while no worker runs; then a worker starts half-way
    between two ticks. The ticks that ran, and when the worker started."""
    await anyio.to_thread.run_sync(import_agentscope)  # so the worker starts at once
    topology = Topology(namespace=f"sc{new_id()[:6]}", partitions=2, tool_partitions=2)
    store_url = f"sqlite:///{tmp_path}/s.db"
    name = f"m-{missed}"
    schedules = Schedules.open(store_url, topology.namespace)
    await schedules.add(name, "My name is Ada.", session_id=f"s-{name}", every="1s")
    await schedules.close()
    await anyio.sleep(math.ceil(time.time()) + 2.5 - time.time())  # two ticks missed, then .5
    async with MemoryBroker(f"memory://{new_id()[:8]}") as broker:
        started = time.time()
        async with serving(broker, store_url, topology, schedule_missed=missed, schedule_grace=0.2):
            with anyio.fail_after(10):
                while len([t for t in ticks_run(name) if t > started]) < 2:
                    await anyio.sleep(0.05)
    return ticks_run(name), started


async def test_ticks_missed_while_no_worker_ran_run_once_with_policy_once(tmp_path: Path) -> None:
    ran, started = await run_after_an_outage("once", tmp_path)
    missed = [t for t in ran if t < started]
    assert missed == [math.floor(started)]  # one turn, for the latest missed tick
    after = [t for t in ran if t > started]
    assert after[:2] == [math.floor(started) + 1, math.floor(started) + 2]


async def test_ticks_missed_while_no_worker_ran_are_skipped_with_policy_skip(
    tmp_path: Path,
) -> None:
    ran, started = await run_after_an_outage("skip", tmp_path)
    assert [t for t in ran if t < started] == []
    after = [t for t in ran if t > started]
    assert after[:2] == [math.floor(started) + 1, math.floor(started) + 2]
