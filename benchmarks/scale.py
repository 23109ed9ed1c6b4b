"""How agentqueue's cost grows with scale, on one private RabbitMQ and Redis.

    uv run --group bench python benchmarks/scale.py           # full run (about 15 minutes)
    uv run --group bench python benchmarks/scale.py --quick   # small sizes (about 5 minutes)

Four curves, each varying one thing with the rest fixed:

- partitions: the session-ordered tool job (`stamp`, 2 tool workers) at 4, 16, 64 and 256
  partitions per queue family;
- live sessions: weather-agent requests (the offline scripted model, 2 agent workers and a tool
  worker) spread at random over 100, 10,000 and 100,000 sessions whose small state is already
  in the store, in the SQLite file store and in Redis;
- agent worker processes: the same agent batch with 1, 2 and 4 agent workers;
- memory: the tool workers' resident memory after 20,000 sessions were each served once and
  left idle, per session.

Every point records throughput, p50/p99 latency under load and the CPU seconds the broker,
the workers and the store used, so the verdict can say which part was the limit. Results go
to benchmarks/results/scale.json, scale.md and scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.deploy.local.redis import LocalRedis
from agentqueue.protocol.ids import new_id
from agentqueue.workers.session_store import open_store
from benchmarks import agent_batch, scale_report
from benchmarks.contenders import agentqueue_tools
from benchmarks.contenders.common import BenchEnv
from benchmarks.harness import CLOCK_TICKS, ROOT, Workers, group_cpu_seconds, run_client

RESULTS = ROOT / "benchmarks" / "results"
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "partitions": [4, 16, 64, 256],
        "ordered_sessions": 256,
        "ordered_events": 12,
        "live_sessions": [100, 10_000, 100_000],
        "agent_requests": 1000,
        "agent_workers": [1, 2, 4],
        "idle_sessions": 20_000,
        "inflight": 64,
    },
    "quick": {
        "partitions": [4, 64],
        "ordered_sessions": 64,
        "ordered_events": 5,
        "live_sessions": [100, 10_000],
        "agent_requests": 200,
        "agent_workers": [1, 2],
        "idle_sessions": 2_000,
        "inflight": 32,
    },
}
SEED_CONCURRENCY = 64  # sessions written to the store at once while seeding
_T0 = time.monotonic()


def log(text: str) -> None:
    """A progress line with the seconds since the run started."""
    print(f"[{time.monotonic() - _T0:6.0f} s] {text}", file=sys.stderr, flush=True)


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds of named process groups over a block: what each part of the system used,
    and the machine's total (the client and anything else are the difference)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        parts = {name: sum(map(group_cpu_seconds, pids())) for name, pids in self.groups.items()}
        return {**parts, "machine": machine_cpu_seconds()}

    def __enter__(self) -> CpuMeter:
        self._start, self._wall = self._now(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.used = {name: end[name] - self._start[name] for name in end}
        self.used["wall"] = time.monotonic() - self._wall


class Run:
    """The servers of the run and how each point starts its workers and measures them."""

    def __init__(self, tmp: Path, size: dict[str, Any]) -> None:
        self.tmp, self.size = tmp, size
        self.rabbit = LocalRabbitMQ(tmp / "rabbitmq").start()
        self.redis = LocalRedis(tmp / "redis", maxmemory_mb=2048)
        self.redis.start()
        self.workers: Workers | None = None

    def close(self) -> None:
        """Stop the workers and the servers."""
        self.stop_workers()
        self.redis.stop()
        self.rabbit.stop()

    def env(self, partitions: int = 16) -> BenchEnv:
        """A fresh namespace on the run's broker."""
        return BenchEnv(self.rabbit.url, f"sc{new_id()[:8]}", partitions=partitions)

    def start_workers(self, commands: list[list[str]], env: BenchEnv, ready: str) -> float:
        """Start worker processes and wait for their first answer; the seconds it took."""
        self.stop_workers()
        self.workers = Workers(commands, env, self.tmp / "logs" / env.namespace)
        started = time.monotonic()
        key = "agent" if ready == "agent" else "agentqueue"
        run_client(key, "ready", {}, env, workers=self.workers, timeout=240)
        return time.monotonic() - started

    def stop_workers(self) -> None:
        """Stop the point's workers."""
        if self.workers is not None:
            self.workers.stop()
            self.workers = None

    def measure(self, key: str, job: str, params: dict[str, Any], env: BenchEnv) -> dict[str, Any]:
        """Run one job's client; its result with the CPU each part used meanwhile."""
        assert self.workers is not None
        workers = self.workers
        meter = CpuMeter(
            {
                "broker": lambda: [self.rabbit.pid or 0],
                "redis": lambda: [self.redis.pid or 0],
                "workers": lambda: workers.pids,
            }
        )
        with meter:
            result = run_client(key, job, params, env, workers=workers, timeout=900)
        result["cpu_s"] = {name: round(v, 2) for name, v in meter.used.items()}
        result["load_average_1m"] = os.getloadavg()[0]
        return result


def partitions_curve(run: Run) -> list[dict[str, Any]]:
    """The session-ordered tool job at each partition count (2 tool workers split them)."""
    size = run.size
    points = []
    for partitions in size["partitions"]:
        env = run.env(partitions)
        log(f"partitions {partitions}: starting 2 tool workers")
        run.start_workers(agentqueue_tools.worker_commands(env, 2), env, "tools")
        params = {
            "sessions": size["ordered_sessions"],
            "events": size["ordered_events"],
            "inflight": size["inflight"],
        }
        result = run.measure("agentqueue", "ordered", params, env)
        log(f"  {result['rps']:.0f} events/s, p99 {result['loaded_p99_ms']:.0f} ms")
        points.append({"partitions": partitions, **result})
    run.stop_workers()
    return points


async def seed_sessions(store_url: str, state: str, start: int, end: int, prefix: str) -> None:
    """Give sessions `prefix{start}`..`prefix{end - 1}` the state, as a turn would commit it."""
    store = open_store(store_url)
    window = anyio.Semaphore(SEED_CONCURRENCY)

    async def seed(i: int) -> None:
        async with window:
            lease = await store.acquire(f"{prefix}{i}", "scale-seed", 60)
            assert lease is not None
            await store.commit(lease, state, f"seed-{prefix}{i}", b"")
            await store.release(lease)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(start, end):
                tg.start_soon(seed, i)
    finally:
        await store.close()


async def read_state(store_url: str, session_id: str) -> str:
    """The state a real turn committed for a session."""
    store = open_store(store_url)
    try:
        state = await store.load_state(session_id)
    finally:
        await store.close()
    if state is None:
        raise RuntimeError(f"session {session_id!r} has no state in {store_url}")
    return state


def sessions_curve(run: Run) -> list[dict[str, Any]]:
    """Agent requests over more and more live sessions, in each store."""
    size = run.size
    stores = {
        "sqlite": f"sqlite:///{run.tmp / 'sessions.db'}",
        "redis": run.redis.url,
    }
    points = []
    for store_name, store_url in stores.items():
        env = run.env()
        log(f"live sessions, {store_name} store: starting 2 agent workers and a tool worker")
        run.start_workers(agent_batch.worker_commands(env, 2, store_url), env, "agent")
        # The `ready` request's session ("s-1") holds the state of one real turn: every live
        # session gets a copy, so each request loads, extends and commits a small state.
        state = anyio.run(read_state, store_url, "s-1")
        prefix, seeded = f"live-{store_name}-", 0
        for live in size["live_sessions"]:
            started = time.monotonic()
            anyio.run(seed_sessions, store_url, state, seeded, live, prefix)
            log(f"  seeded {live - seeded} sessions in {time.monotonic() - started:.0f} s")
            seeded = live
            params = {
                "requests": size["agent_requests"],
                "inflight": size["inflight"],
                "sessions": live,
                "prefix": prefix,
            }
            result = run.measure("agent", "spread", params, env)
            result["rss_mb"] = run.workers.rss_mb() if run.workers else None
            log(
                f"  {live} live sessions: {result['items_per_s']:.0f} requests/s,"
                f" p99 {result['loaded_p99_ms']:.0f} ms"
            )
            points.append(
                {"store": store_name, "live_sessions": live, "state_bytes": len(state), **result}
            )
    run.stop_workers()
    return points


def workers_curve(run: Run) -> list[dict[str, Any]]:
    """The agent batch with more agent worker processes (one tool worker beside them)."""
    size = run.size
    points = []
    for count in size["agent_workers"]:
        env = run.env()
        log(f"agent workers {count}: starting")
        run.start_workers(agent_batch.worker_commands(env, count), env, "agent")
        params = {"requests": size["agent_requests"], "inflight": size["inflight"]}
        result = run.measure("agent", "batch", params, env)
        log(f"  {result['items_per_s']:.0f} requests/s, p99 {result['loaded_p99_ms']:.0f} ms")
        points.append({"agent_workers": count, **result})
    run.stop_workers()
    return points


def memory_point(run: Run) -> dict[str, Any]:
    """Tool workers' resident memory before and after serving many sessions once each."""
    sessions = run.size["idle_sessions"]
    env = run.env()
    log(f"memory: {sessions} sessions served once each by 2 tool workers")
    run.start_workers(agentqueue_tools.worker_commands(env, 2), env, "tools")
    assert run.workers is not None
    time.sleep(1.0)  # let start-up allocations settle before the baseline
    before = run.workers.rss_mb()
    params = {"requests": sessions, "inflight": run.size["inflight"], "prefix": "idle-"}
    result = run.measure("agentqueue", "spread", params, env)
    time.sleep(1.0)
    after = run.workers.rss_mb()
    run.stop_workers()
    per_session = (after - before) * 1024 * 1024 / sessions
    log(f"  {before:.1f} MB -> {after:.1f} MB: {per_session:.0f} bytes per idle session")
    return {
        "sessions": sessions,
        "rss_before_mb": before,
        "rss_after_mb": after,
        "bytes_per_idle_session": per_session,
        "rps": result["rps"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the curves, write and print the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about 5 minutes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--label", default="", help="a note for the title, e.g. 'busy machine'")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    results: dict[str, Any] = {
        "mode": mode,
        "label": args.label,
        "sizes": size,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aq-scale-") as tmp:
        run = Run(Path(tmp), size)
        try:
            results["partitions"] = partitions_curve(run)
            results["sessions"] = sessions_curve(run)
            results["agent_workers"] = workers_curve(run)
            results["memory"] = memory_point(run)
        finally:
            run.close()
    results["wall_seconds"] = time.monotonic() - started
    results["load_average_at_end"] = os.getloadavg()
    stem = "scale" if mode == "full" else "scale-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = scale_report.markdown(results)
    (args.out / f"{stem}.md").write_text(table)
    scale_report.chart(results, args.out / f"{stem}.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
