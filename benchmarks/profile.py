"""Flame graphs of agentqueue's worker and client on the pipelined and ordered jobs (py-spy).

    uv run --group bench python benchmarks/profile.py --out /tmp/flames [--requests 8000]

Starts a private RabbitMQ, one tools worker under `py-spy record` and the job's client under
another, and writes `flame-{worker,client}-{pipelined,ordered}.svg` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentqueue.protocol.ids import new_id
from benchmarks.contenders import agentqueue_tools
from benchmarks.contenders.common import PYTHON, BenchEnv
from benchmarks.harness import ROOT, Workers, base_environ, run_client

PY_SPY = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))


FORMAT = "flamegraph"  # or "raw": collapsed stacks, for counting shares


def _spied(argv: list[str], out: Path) -> list[str]:
    if FORMAT == "raw":
        out = out.with_suffix(".txt")
    spy = [PY_SPY, "record", "--rate", "250", "--nonblocking", "--format", FORMAT, "-o", str(out)]
    return [*spy, "--", *argv]


def _stop_spied(workers: Workers) -> None:
    """SIGTERM the profiled worker itself (py-spy's child), so py-spy writes its graph."""
    for proc in workers.procs:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        proc.wait(60)


def profile(url: str, job: str, params: dict[str, object], out: Path, logs: Path) -> None:
    """Profile one job: one worker and its client, each under py-spy."""
    env = BenchEnv(url, f"p{job[:4]}{new_id()[:6]}")
    argv = agentqueue_tools.worker_commands(env, 1)[0]
    workers = Workers([_spied(argv, out / f"flame-worker-{job}.svg")], env, logs / job)
    try:
        run_client("agentqueue", "ready", {}, env, workers=workers, timeout=120)
        client = [PYTHON, "-m", "benchmarks.client", "agentqueue", job, json.dumps(params)]
        done = subprocess.run(
            _spied(client, out / f"flame-client-{job}.svg"),
            env=base_environ(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        print(job, done.stdout.strip().splitlines()[-1], flush=True)
    finally:
        _stop_spied(workers)


def main() -> int:
    """Start a broker and profile both jobs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--jobs", default="pipelined,ordered")
    parser.add_argument("--raw", action="store_true", help="collapsed stacks instead of SVGs")
    args = parser.parse_args()
    global FORMAT
    FORMAT = "raw" if args.raw else FORMAT
    args.out.mkdir(parents=True, exist_ok=True)
    from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ

    with tempfile.TemporaryDirectory(prefix="aq-prof-") as tmp:
        rabbit = LocalRabbitMQ(Path(tmp) / "rabbitmq").start()
        try:
            jobs = {
                "pipelined": {"requests": args.requests, "inflight": 256},
                "ordered": {"sessions": 200, "events": args.requests // 200, "inflight": 256},
            }
            for job in args.jobs.split(","):
                profile(rabbit.url, job, jobs[job], args.out, Path(tmp) / "logs")
        finally:
            rabbit.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
