"""Throughput of the Alibaba Cloud path on this machine, beside RabbitMQ's, no faults.

    uv run python benchmarks/cloud_throughput.py            # 1, 2 and 4 partitions (< 5 min)
    uv run python benchmarks/cloud_throughput.py --quick    # 1 partition, under a minute

A `Client` (a process of its own, see cloud_client.py) sends tool calls and agent requests of
the chaos app (benchmarks/chaos_app.py, offline scripted model) through:

- MNS + FC: the local MNS server in a process of its own (chaos_cloud's `MNSServer`) and the FC
  emulator (`LocalFC`, in this process): one function for tool calls and one for agent
  requests, a queue trigger per partition, as many provisioned instances as partitions
  (a trigger hands one batch at a time to an instance, so more could not be used);
- RabbitMQ: one local node, one `agentqueue worker` per role.

For each job it records requests per second, p50 and p99 latency, and the CPU seconds the MNS
server (or RabbitMQ), the instances (or workers), the triggers and the client used, read from
/proc over the measured requests only. It writes a Markdown table and a verdict computed from
those numbers (which part is the limit) to benchmarks/results/cloud-throughput.md and the
numbers to cloud-throughput.json; `--label` names a run made on a busy machine in the title.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.mns_config import Credentials
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.deploy.local.redis import LocalRedis
from agentqueue.protocol.ids import new_id
from benchmarks.chaos_cloud import APP, MNSServer, app_environ, function_environ
from benchmarks.cloud_report import CLOUD, RABBIT, partitions_text, render, verdict
from benchmarks.contenders.common import PYTHON, BenchEnv
from benchmarks.harness import (
    ROOT,
    BenchError,
    Workers,
    group_pids,
    process_cpu_seconds,
    runqueue_seconds,
)

RESULTS = ROOT / "benchmarks" / "results" / "cloud-throughput.md"
SIZES: dict[str, dict[str, Any]] = {
    "full": {"levels": (1, 2, 4), "tools": 300, "agents": 80},
    "quick": {"levels": (1,), "tools": 40, "agents": 24},
}
INFLIGHT = {"tools": 32, "agents": 16}
JOB_TIMEOUT = 180.0  # seconds one job's client may take, warm-up included
MAX_LINE = 1 << 20
_T0 = time.monotonic()


def log(text: str) -> None:
    """A progress line on stderr, with seconds since the start."""
    print(f"[{time.monotonic() - _T0:6.1f}] {text}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """What every job of a run shares: its options, its directory and its servers."""

    args: argparse.Namespace
    run_dir: Path
    mns: MNSServer
    rabbit: LocalRabbitMQ
    store_url: str

    def topology(self, backend: str, partitions: int) -> Topology:
        """A fresh namespace per level, so no job meets another's queues."""
        prefix = "cloud" if backend == CLOUD else "rabbit"
        namespace = f"{prefix}{partitions}-{new_id()[:6]}"
        return Topology(namespace=namespace, partitions=partitions, tool_partitions=partitions)

    def job_size(self, job: str) -> int:
        """Requests of one run of `job`."""
        return int(SIZES["quick" if self.args.quick else "full"][job])


async def measure(
    run: Run,
    backend: str,
    job: str,
    topology: Topology,
    env: dict[str, str],
    parts: dict[str, Callable[[], list[int]]],
) -> dict[str, Any]:
    """Run one job's client; its figures, and the CPU seconds each part's processes (`parts`:
    their pids) used and waited for while it ran."""
    params = {"requests": run.job_size(job), "inflight": INFLIGHT[job]}
    argv = [PYTHON, "-m", "benchmarks.cloud_client", job, json.dumps(params)]
    err_path = run.run_dir / "clients" / f"{topology.namespace}-{job}.log"
    err_path.parent.mkdir(parents=True, exist_ok=True)
    with err_path.open("ab") as err, anyio.fail_after(JOB_TIMEOUT):
        process = await anyio.open_process(
            argv, env={**os.environ, **env}, cwd=ROOT, stderr=err, start_new_session=True
        )
        try:
            assert process.stdout is not None and process.stdin is not None
            lines = BufferedByteReceiveStream(process.stdout)
            try:
                await lines.receive_until(b"\n", MAX_LINE)  # warmed up
                before = _sched(parts)
                await process.stdin.send(b"go\n")
                result = json.loads(await lines.receive_until(b"\n", MAX_LINE))
            except (anyio.EndOfStream, anyio.IncompleteRead):
                code = await process.wait()
                tail = err_path.read_text(errors="replace")[-3000:]
                raise BenchError(f"{backend} {job} client exited with {code}:\n{tail}") from None
            after = _sched(parts)
        finally:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    cpu = {part: after[part][0] - before[part][0] for part in parts}
    cpu["client"] = result.pop("client_cpu_s")
    waited = {part: after[part][1] - before[part][1] for part in parts}
    waited["client"] = result.pop("client_runqueue_s")
    row = {"backend": backend, "job": job, "partitions": topology.partitions, **result}
    row["cpu_s"], row["runqueue_s"] = cpu, waited
    log(
        f"{backend} {job} at {partitions_text(row)}: {row['answered']}/{row['requests']}"
        f" answered, {row['rps']:.1f} req/s, p50 {row['p50_ms'] or 0:.0f} ms,"
        f" p99 {row['p99_ms'] or 0:.0f} ms, {row['errors']} errors;"
        f" CPU s {', '.join(f'{k} {v:.2f}' for k, v in cpu.items())}"
    )
    return row


def _fc_figures(fc: LocalFC) -> dict[str, Any]:
    stats = fc.stats
    ordered = sorted(stats.invocation_ms)
    return {
        "invocations": stats.cold_starts + stats.warm_invocations,
        "events": stats.events,
        "failed_invocations": stats.failed_invocations,
        "invocation_p50_ms": ordered[len(ordered) // 2] if ordered else None,
    }


def _sched(parts: dict[str, Callable[[], list[int]]]) -> dict[str, tuple[float, float]]:
    """(CPU seconds used, seconds waited for a CPU) so far, of each part's processes."""
    counts = {}
    for part, pids in parts.items():
        live = pids()
        counts[part] = (process_cpu_seconds(live), runqueue_seconds(live))
    return counts


def _instance_pids(functions: list[LocalFC]) -> list[int]:
    return [pid for fc in functions for pid in fc.provisioned_instances]


async def cloud_level(run: Run, partitions: int) -> list[dict[str, Any]]:
    """Tool calls, then agent requests, through local MNS and the FC emulator."""
    topology = run.topology(CLOUD, partitions)
    handlers = run.run_dir / "handlers.log"
    environ = function_environ(run.args, run.mns, run.store_url, topology, handlers)
    trigger = TriggerConfig(batch_size=run.args.batch_size, batch_window=run.args.batch_window)
    credentials = Credentials(run.mns.access_id, run.mns.access_key)
    rows = []
    async with MNSBroker(run.mns.url, credentials=credentials) as trigger_side:
        await trigger_side.declare(topology)
        # Two functions, as chaos_cloud: an agent turn holds its instance while its tool runs.
        functions = {
            job: LocalFC(
                trigger_side,
                topology,
                env={**environ, "AGENTQUEUE_PRELOAD": "agentscope.agent"}
                if family == REQUESTS
                else environ,
                max_instances=partitions,
                provisioned=partitions,
                trigger=trigger,
                queues=topology.queues(family),
                cwd=str(ROOT),
            )
            for job, family in (("tools", TOOLS), ("agents", REQUESTS))
        }
        # Both functions boot at once (the agents' instances import AgentScope meanwhile); a
        # job counts the instances of the functions its requests reach.
        reached = {"tools": ["tools"], "agents": ["tools", "agents"]}
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as starting:
                for fc in functions.values():
                    starting.start_soon(tg.start, fc.run)  # until its instances are ready
            for job in functions:
                parts = {
                    "server": lambda: group_pids(run.mns.pid or 0),
                    "workers": functools.partial(
                        _instance_pids, [functions[f] for f in reached[job]]
                    ),
                    "triggers": lambda: [os.getpid()],  # the emulator and little else
                }
                row = await measure(run, CLOUD, job, topology, environ, parts)
                row["fc"] = {name: _fc_figures(f) for name, f in functions.items()}
                rows.append(row)
            tg.cancel_scope.cancel()
    return rows


def _worker_pids(fleet: list[Workers]) -> list[int]:
    return [pid for workers in fleet for leader in workers.pids for pid in group_pids(leader)]


async def rabbit_level(run: Run, partitions: int) -> list[dict[str, Any]]:
    """The same jobs through RabbitMQ: a tool worker and an agent worker."""
    topology = run.topology(RABBIT, partitions)
    environ = app_environ(
        run.rabbit.url, run.store_url, topology, run.args.lease_ttl, run.run_dir / "handlers.log"
    )
    bench_env = BenchEnv(run.rabbit.url, topology.namespace, partitions=partitions)
    fleet = {
        job: Workers(
            [[PYTHON, "-m", "agentqueue.cli", "worker", "--app", APP, "--role", job]],
            bench_env,
            run.run_dir / "workers" / f"{topology.namespace}-{job}",
            extra_env=environ,
        )
        for job in ("tools", "agents")
    }
    reached = {"tools": [fleet["tools"]], "agents": list(fleet.values())}
    rows = []
    try:
        for job in fleet:
            parts = {
                "server": lambda: group_pids(run.rabbit.pid or 0),
                "workers": functools.partial(_worker_pids, reached[job]),
            }
            rows.append(await measure(run, RABBIT, job, topology, environ, parts))
    finally:
        for workers in fleet.values():
            await anyio.to_thread.run_sync(workers.stop)
    return rows


async def run_all(run: Run) -> list[dict[str, Any]]:
    """Every level through both backends."""
    rows = []
    for partitions in SIZES["quick" if run.args.quick else "full"]["levels"]:
        rows += await cloud_level(run, partitions)
        rows += await rabbit_level(run, partitions)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 partition, few requests")
    p.add_argument("--label", default="", help="named in the title, e.g. 'quick, busy machine'")
    p.add_argument("--wait", type=int, default=1, help="MNS long-poll seconds (default 1)")
    p.add_argument(
        "--batch-size", dest="batch_size", type=int, default=10, help="trigger batch (default 10)"
    )
    p.add_argument(
        "--batch-window",
        dest="batch_window",
        type=float,
        default=0.1,
        help="trigger batch window in seconds (default 0.1, as the cloud chaos run)",
    )
    p.add_argument("--lease-ttl", dest="lease_ttl", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=RESULTS, help=f"Markdown file (default {RESULTS})")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every job, write the table and the JSON, print the table."""
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loadavg = os.getloadavg()
    run_dir = Path(tempfile.mkdtemp(prefix="agentqueue-cloud-bench-"))
    log(f"run dir {run_dir}")
    mns = MNSServer(run_dir, wait=args.wait)
    with LocalRabbitMQ(run_dir / "rabbit") as rabbit, LocalRedis(run_dir / "redis") as redis:
        mns.start()
        try:
            log("MNS server, RabbitMQ and Redis up")
            rows = anyio.run(run_all, Run(args, run_dir, mns, rabbit, redis.url))
        finally:
            mns.stop()
    settings = {
        "cores": os.cpu_count() or 1,
        "loadavg": loadavg,
        "loadavg_end": os.getloadavg(),
        "wait": args.wait,
        "batch_size": args.batch_size,
        "batch_window": args.batch_window,
        "store": "redis",
        "tools_inflight": INFLIGHT["tools"],
        "agents_inflight": INFLIGHT["agents"],
    }
    label = args.label or ("quick" if args.quick else "full")
    result = {
        "label": label,
        "started": started,
        "seconds": time.monotonic() - _T0,
        "settings": settings,
        "rows": rows,
        "verdict": verdict(rows, settings),
    }
    page = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(page)
    log(f"wrote {args.out} and {args.out.with_suffix('.json').name}")
    return 0 if all(row["errors"] == 0 and row["answered"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
