"""Three real worker processes on RabbitMQ fire a 2-second schedule once per tick, across one
worker's SIGKILL and its restart; delayed requests parked before the kill run once, on time.

The schedule runs for a minute (31 ticks); `TICKS_TEST_SECONDS=20` shortens it for a quick
local check.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from agentqueue import Client
from agentqueue.broker.topology import Topology
from agentqueue.protocol import new_id
from tests import processes
from tests.processes import ROOT, WorkerProcess, workers

pytestmark = [pytest.mark.slow, pytest.mark.broker]

PERIOD = 2.0
ADA = "Nice to meet you, Ada. I'll remember that."
MINUTE = float(os.environ.get("TICKS_TEST_SECONDS", "60"))  # see the module doc


def worker_args(url: str, ns: str, store: str) -> tuple[str, ...]:
    return processes.worker_args("tests.apps.ticks:app", url, ns, store)


def ticks_logged(log: Path, name: str) -> list[float]:
    """The tick of every turn a schedule's request ran (one line per committed run)."""
    if not log.exists():
        return []
    prefix = f"schedule-{name}-"
    return [
        int(line.split()[0][len(prefix) :]) / 1000
        for line in log.read_text().splitlines()
        if line.startswith(prefix)
    ]


def runs_logged(log: Path, request_id: str) -> list[float]:
    """When each committed run of `request_id` started."""
    lines = log.read_text().splitlines()
    return [float(line.split()[1]) for line in lines if line.split()[0] == request_id]


async def test_three_workers_fire_a_two_second_schedule_once_per_tick_across_a_kill_and_a_restart(
    rabbitmq_url: str, tmp_path: Path
) -> None:
    ns = f"sw{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
    store = f"sqlite:///{tmp_path}/sessions.db"
    log = tmp_path / "runs.log"
    env = {"AGENTQUEUE_TEST_LOG": str(log), "AGENTQUEUE_LEASE_TTL": "5"}
    args = worker_args(rabbitmq_url, ns, store)
    command = [sys.executable, "-m", "agentqueue.cli", "schedule", "add", "tick",
               "My name is Ada.", "--session", "ticking", "--every", "2s", "--store", store,
               "--namespace", ns]  # fmt: skip
    added = await anyio.to_thread.run_sync(
        functools.partial(subprocess.run, command, cwd=ROOT, capture_output=True, text=True)
    )
    assert added.stdout.startswith("schedule tick: every 2s, next ")
    with workers(args, args, args, env=env) as (doomed, *_):
        with anyio.fail_after(30):
            while not ticks_logged(log, "tick"):
                await anyio.sleep(0.1)
        first = ticks_logged(log, "tick")[0]
        kill_at = first + MINUTE / 5
        async with Client(rabbitmq_url, topology=topology) as client:
            # Parked in store timers by whichever workers own their partitions, due after the
            # kill: they run once each, at their time, whoever fires them.
            delayed = [
                await client.submit(
                    "My name is Ada.", session_id=f"later-{i}", not_before=kill_at + 3
                )
                for i in range(4)
            ]
            await anyio.sleep(kill_at - time.time())  # the scenario: a kill at this point
            doomed.kill()  # SIGKILL, early in the run
            await anyio.sleep(3)  # the scenario: three workers down to two for 3 s
            revived = WorkerProcess(*args, env=env)
            try:
                with anyio.fail_after(60):
                    finals = [await handle.final() for handle in delayed]
            except BaseException:
                revived.kill()
                raise
        assert [final.text for final in finals] == [ADA] * 4
        for handle in delayed:
            (started,) = runs_logged(log, handle.id)
            assert started >= kill_at + 3
        try:
            await anyio.to_thread.run_sync(revived.wait_serving)
            last = first + MINUTE
            expected = [first + i * PERIOD for i in range(int(MINUTE / PERIOD) + 1)]
            # Until the minute's last tick, and then a little: one queued behind the kill runs late.
            with anyio.fail_after(last - time.time() + 30):
                while not set(expected) <= set(ticks_logged(log, "tick")):
                    await anyio.sleep(0.1)
        finally:
            revived.kill()
    ran = [t for t in ticks_logged(log, "tick") if t <= last]
    assert sorted(ran) == expected  # every tick of the minute, each exactly once
    assert math.isclose(expected[-1] - expected[0], MINUTE)
