"""The chaos run's processes and the chaos done to them.

`WorkerFleet` keeps real `agentqueue worker` processes running, as a process supervisor would: a
slot whose process died (killed by the chaos, or exited because the broker was down when it
started) gets a new process. `Chaos` SIGKILLs a random worker every few seconds, and, once each
at a given share of the answers, cuts the client's connection, restarts the broker and (on a
cluster) SIGKILLs a broker node.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agentqueue.deploy.local.process import end_child, spawn_child
from benchmarks.chaos_app import LOG_ENV
from benchmarks.chaos_load import ChaosLoad
from benchmarks.chaos_report import ChaosEvents

log = logging.getLogger("agentqueue.chaos")

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.chaos_app:app"
RESPAWN_PAUSE = 1.0  # seconds before a slot whose process exited on its own gets a new one


@dataclass
class WorkerSlot:
    """One worker position (agents or tools) and the process filling it now."""

    role: str
    index: int
    broker_url: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started: int = 0

    @property
    def alive(self) -> bool:
        """True while the current process runs."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class WorkerFleet:
    """The worker processes of a run."""

    run_dir: Path
    store_url: str
    namespace: str
    environ: dict[str, str]
    slots: list[WorkerSlot] = field(default_factory=list)
    crashes: int = 0

    def add(self, role: str, broker_url: str) -> WorkerSlot:
        """A new slot; `start` fills it."""
        slot = WorkerSlot(role, sum(1 for s in self.slots if s.role == role), broker_url)
        self.slots.append(slot)
        return slot

    def start(self, slot: WorkerSlot) -> None:
        """Start a process in the slot (its log goes to the run dir)."""
        slot.started += 1
        slot.log_path = self.run_dir / "workers" / f"{slot.role}-{slot.index}-{slot.started}.log"
        argv = [sys.executable, "-m", "agentqueue.cli", "worker", "--app", APP,
                "--role", slot.role, "--broker", slot.broker_url, "--store", self.store_url,
                "--namespace", self.namespace]  # fmt: skip
        slot.proc = spawn_child(
            argv, env=self.environ, cwd=ROOT, log_path=slot.log_path, marker=self.run_dir
        )

    async def wait_serving(self, timeout: float = 120) -> None:
        """Return once every slot's process logs that it serves its queues."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            while not _serving(slot):
                if not slot.alive:
                    raise RuntimeError(
                        f"worker {slot.role}-{slot.index} exited; see {slot.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"worker {slot.role}-{slot.index} is not serving; see {slot.log_path}"
                    )
                await anyio.sleep(0.1)

    def kill(self, slot: WorkerSlot) -> None:
        """SIGKILL the slot's process group, as a machine going away would, and start anew."""
        if slot.proc is not None:
            end_child(slot.proc, sig=signal.SIGKILL, timeout=10)
        self.start(slot)

    def kill_random(self, rng: random.Random) -> str | None:
        """SIGKILL a random serving worker and start it again; its role, or None when none is
        serving yet. A worker still starting holds no events, so killing it tests nothing; and
        on a loaded machine, where starting (importing AgentScope) can take longer than the mean
        time between kills, killing starting workers would stop all progress."""
        serving = [slot for slot in self.slots if slot.alive and _serving(slot)]
        if not serving:
            log.warning("chaos: no worker serving yet; this kill is skipped")
            return None
        slot = rng.choice(serving)
        log.warning(
            "chaos: SIGKILL worker %s-%d (pid %s)",
            slot.role,
            slot.index,
            slot.proc.pid if slot.proc else None,
        )
        self.kill(slot)
        return slot.role

    async def supervise(self) -> None:
        """Give every slot whose process exited on its own a new process, until cancelled."""
        while True:
            await anyio.sleep(RESPAWN_PAUSE)
            for slot in self.slots:
                if slot.proc is not None and not slot.alive:
                    self.crashes += 1
                    log.warning(
                        "worker %s-%d exited with %s; starting it again",
                        slot.role,
                        slot.index,
                        slot.proc.returncode,
                    )
                    self.start(slot)

    def describe(self) -> None:
        """Have every live worker log what its tasks wait on (SIGUSR1), for a run that stalled."""
        for slot in self.slots:
            if slot.alive:
                assert slot.proc is not None
                slot.proc.send_signal(signal.SIGUSR1)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM every worker (they finish or hand back their events) and wait."""
        for slot in self.slots:
            if slot.alive:
                assert slot.proc is not None
                slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.proc is not None:
                end_child(slot.proc, sig=signal.SIGTERM, timeout=timeout)


def _serving(slot: WorkerSlot) -> bool:
    try:
        return slot.log_path is not None and " serving " in slot.log_path.read_text()
    except FileNotFoundError:
        return False


def worker_environ(handler_log: Path, lease_ttl: float) -> dict[str, str]:
    """Worker env: offline model, repo importable, our settings only."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTQUEUE_", "DASHSCOPE_", "OPENAI_", "OTEL_"))
    }
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    environ.update(
        AGENTQUEUE_MODEL="scripted",
        AGENTQUEUE_LEASE_TTL=str(lease_ttl),
        **{LOG_ENV: str(handler_log)},
    )
    return environ


@dataclass
class Chaos:
    """When to do what; `run` does it while `progress()` (0..1) climbs."""

    kill: Callable[[random.Random], str | None]  # SIGKILLs a worker; its role (None: none up)
    progress: Callable[[], float]
    rng: random.Random
    kill_every: float | None  # seconds between worker kills; None: one kill at `kill_at`
    kill_at: float = 0.2
    cut_at: float = 0.3
    restart_at: float = 0.5
    node_kill_at: float = 0.7
    cut_client: Callable[[], int] | None = None
    restart_broker: Callable[[], None] | None = None
    kill_node: Callable[[], str] | None = None
    events: ChaosEvents = field(default_factory=ChaosEvents)

    async def run(self) -> None:
        """Do the chaos until cancelled (the load has finished by then)."""
        next_kill = self._next_kill(time.monotonic())
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._faults)
            while True:
                await anyio.sleep(0.2)
                done = self.progress()
                if self.kill_every is None:
                    if done >= self.kill_at and not any(self.events.worker_kills.values()):
                        self._kill_worker()
                elif time.monotonic() >= next_kill and done < 1.0:
                    self._kill_worker()
                    next_kill = self._next_kill(time.monotonic())

    async def _faults(self) -> None:
        # One after another: a node is never killed while another one is still restarting,
        # which would take the cluster's majority away.
        plan = [
            ("cut", self.cut_client, self.cut_at),
            ("restart", self.restart_broker, self.restart_at),
            ("node", self.kill_node, self.node_kill_at),
        ]
        for name, action, at in plan:
            if action is None:
                continue
            while self.progress() < at:  # noqa: ASYNC110 - progress is a count, not an event
                await anyio.sleep(0.2)
            await self._once(name, action)

    def _next_kill(self, now: float) -> float:
        every = self.kill_every or 0.0
        return now + self.rng.uniform(every * 0.5, every * 1.5)

    def _kill_worker(self) -> None:
        role = self.kill(self.rng)
        if role is None:
            self.events.kills_skipped += 1
        else:
            self.events.worker_kills[role] = self.events.worker_kills.get(role, 0) + 1

    async def _once(self, name: str, action: Callable[[], object]) -> None:
        log.warning(
            "chaos: %s",
            {
                "cut": "cutting the client's connection",
                "restart": "restarting the broker",
                "node": "SIGKILL of a broker node",
            }[name],
        )
        started = time.monotonic()
        self.events.timeline.append((started, name))
        if name == "cut":
            self.events.client_cuts.append(int(action()))  # type: ignore[call-overload]
            return
        result = await anyio.to_thread.run_sync(action)
        if name == "restart":
            self.events.broker_restarts.append(time.monotonic() - started)
        else:
            self.events.node_kills.append(str(result))
        log.warning("chaos: %s done in %.1f s", name, time.monotonic() - started)


async def stop_on_signal(load_scope: anyio.CancelScope) -> None:
    """Ctrl-C or SIGTERM ends the load early; the run is still measured and its servers stopped."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("%s: stopping the load, then measuring", signal.Signals(signum).name)
            load_scope.cancel()
            return


async def report_progress(load: ChaosLoad, chaos: Chaos, more: Callable[[], str]) -> None:
    """Log the answers so far and the chaos done every 10 s (`more` adds the run's own counts)."""
    while True:
        await anyio.sleep(10)
        e = chaos.events
        log.info(
            "answered %d/%d (sent %d); worker kills %d, broker restarts %d, client cuts %d; %s",
            load.answered,
            load.requests,
            load.sent,
            sum(e.worker_kills.values()),
            len(e.broker_restarts),
            len(e.client_cuts),
            more(),
        )


async def drive(
    load: ChaosLoad,
    chaos: Chaos,
    *,
    max_seconds: float,
    more: Callable[[], str],
    alongside: Sequence[Callable[[], Awaitable[None]]] = (),
) -> float:
    """Run the load to its end while the chaos (and `alongside`, e.g. a supervisor) runs; the
    seconds the load took. A signal or `max_seconds` ends the load early."""
    log.info("sending %d requests over %d sessions", load.requests, load.sessions)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for task in alongside:
            tg.start_soon(task)
        tg.start_soon(chaos.run)
        tg.start_soon(report_progress, load, chaos, more)
        with anyio.move_on_after(max_seconds) as load_scope:
            tg.start_soon(stop_on_signal, load_scope)
            await load.run()
        tg.cancel_scope.cancel()
    return time.monotonic() - started
