"""Run every benchmark job through every contender against one private RabbitMQ.

    uv run --group bench python benchmarks/run.py            # full run (under 15 minutes)
    uv run --group bench python benchmarks/run.py --quick    # about a minute
    uv run --group bench python benchmarks/run.py --smoke --broker amqp://...   # shape check

Clients and workers run in separate processes. Results go to benchmarks/results/latest.json,
latest.md (the table, with ratios to raw aio-pika) and latest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `benchmarks.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentqueue.protocol.ids import new_id
from benchmarks.client import contender
from benchmarks.contenders.common import BenchEnv
from benchmarks.harness import BenchError, LocalRedisServer, RssSampler, Workers, run_client

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ["raw", "agentqueue", "celery", "taskiq", "faststream"]
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "calls": 500,
        "requests": 20_000,
        "inflight": 256,
        "sessions": 500,
        "events": 20,
        "agent_requests": 2000,
        "agent_inprocess": 300,
        "agent_inflight": 64,
        "codec_ops": 200_000,
    },
    "quick": {
        "calls": 200,
        "requests": 2000,
        "inflight": 256,
        "sessions": 100,
        "events": 10,
        "agent_requests": 100,
        "agent_inprocess": 50,
        "agent_inflight": 32,
        "codec_ops": 20_000,
    },
    "smoke": {
        "calls": 0,
        "requests": 200,
        "inflight": 256,
        "sessions": 0,
        "events": 0,
        "agent_requests": 0,
        "agent_inprocess": 0,
        "agent_inflight": 0,
        "codec_ops": 2000,
    },
}
PACKAGES = [
    "aio-pika",
    "aiormq",
    "anyio",
    "msgspec",
    "agentscope",
    "celery",
    "kombu",
    "taskiq",
    "taskiq-aio-pika",
    "faststream",
    "pydantic",
    "redis",
    "matplotlib",
]


_T0 = time.monotonic()


def log(text: str) -> None:
    """Progress on stderr (with seconds since start), so stdout stays the table."""
    print(f"[{time.monotonic() - _T0:6.1f}] {text}", file=sys.stderr, flush=True)


def bench_contender(
    key: str, url: str, redis_url: str, size: dict[str, Any], mode: str, logs: Path
) -> dict[str, Any]:
    """Jobs 1-3 and the footprint (job 6) of one contender."""
    module = contender(key)
    result: dict[str, Any] = {"name": module.NAME, "config": module.CONFIG}
    env = BenchEnv(url, f"b{key[:4]}{new_id()[:6]}", redis_url)
    workers = Workers(module.worker_commands(env, 1), env, logs / key / "echo")
    try:
        log(f"  {key}: starting 1 worker")
        ready = run_client(key, "ready", {}, env, workers=workers, timeout=120)
        log(f"  {key}: first answer after {ready['first_answer_at'] - workers.started_at:.1f} s")
        result["startup_s"] = ready["first_answer_at"] - workers.started_at
        time.sleep(1.0)
        result["rss_idle_mb"] = workers.rss_mb()
        if size["calls"]:
            log(f"  {key}: latency, {size['calls']} calls one at a time")
            result["latency"] = run_client(
                key, "latency", {"calls": size["calls"]}, env, workers=workers
            )
        log(f"  {key}: pipelined, {size['requests']} requests, {size['inflight']} in flight")
        with RssSampler(workers) as sampler:
            result["pipelined"] = run_client(
                key,
                "pipelined",
                {"requests": size["requests"], "inflight": size["inflight"]},
                env,
                workers=workers,
            )
        result["rss_load_mb"] = sampler.peak_mb
    finally:
        log(f"  {key}: stopping the worker")
        workers.stop()
    if size["sessions"]:
        log(f"  {key}: session-ordered, {size['sessions']} x {size['events']}, 2 workers")
        env = BenchEnv(url, f"o{key[:4]}{new_id()[:6]}", redis_url)
        workers = Workers(module.worker_commands(env, 2), env, logs / key / "ordered")
        try:
            run_client(key, "ready", {}, env, workers=workers, timeout=120)
            params = {
                "sessions": size["sessions"],
                "events": size["events"],
                "inflight": size["inflight"],
            }
            result["ordered"] = run_client(key, "ordered", params, env, workers=workers)
        finally:
            workers.stop()
    return result


def bench_agents(url: str, size: dict[str, Any], logs: Path) -> dict[str, Any]:
    """Job 4: the weather agent over the queues (2 agent workers, 1 tool worker) and in-process."""
    from benchmarks import agent_batch

    env = BenchEnv(url, f"agent{new_id()[:6]}")
    params = {"requests": size["agent_requests"], "inflight": size["agent_inflight"]}
    result: dict[str, Any] = {"config": agent_batch.CONFIG}
    # The in-process ceiling is a rate; fewer requests keep the full run under 15 minutes.
    inprocess = {**params, "requests": size["agent_inprocess"]}
    log(f"  agent batch in-process, {inprocess['requests']} requests")
    result["inprocess"] = run_client("agent", "inprocess", inprocess, env)
    workers = Workers(agent_batch.worker_commands(env, 2), env, logs / "agent")
    try:
        run_client("agent", "ready", {}, env, workers=workers, timeout=180)
        log(f"  agent batch over agentqueue, {params['requests']} requests")
        result["agentqueue"] = run_client("agent", "batch", params, env, workers=workers)
    finally:
        workers.stop()
    return result


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine skews every number: keep the load next to them.
        "load_average_1_5_15": os.getloadavg(),
        "packages": versions,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the jobs, write and print the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    group.add_argument(
        "--smoke", action="store_true", help="raw + agentqueue job 2 (200) and the codec"
    )
    parser.add_argument("--broker", help="use this RabbitMQ instead of starting a private one")
    parser.add_argument("--only", help="comma-separated contenders (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-agents", action="store_true", help="skip job 4")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = SIZES[mode]
    keys = args.only.split(",") if args.only else (["raw", "agentqueue"] if args.smoke else ALL)

    from benchmarks import codec, report

    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode,
        "sizes": size,
        "machine": machine(),
        "contenders": {},
        "errors": {},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with tempfile.TemporaryDirectory(prefix="aq-bench-") as tmp:
        tmp_dir = Path(tmp)
        rabbit = redis = None
        try:
            if args.broker:
                url = args.broker
                results["broker"] = {"kind": "given", "url": "(given by --broker)"}
            else:
                from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ

                rabbit = LocalRabbitMQ(tmp_dir / "rabbitmq").start()
                url = rabbit.url
                results["broker"] = {
                    "kind": "LocalRabbitMQ (private node on 127.0.0.1)",
                    "rabbitmq_start_s": rabbit.last_start_seconds,
                    "memory_limit_mb": rabbit.memory_limit_mb,
                    "settings": "defaults plus disk_free_limit 50MB, log to file; data dir on tmp",
                }
                results["broker"]["version"] = _rabbit_version()
            if "taskiq" in keys:
                redis = LocalRedisServer(tmp_dir / "redis").start()
            for key in keys:
                log(f"{key}:")
                try:
                    results["contenders"][key] = bench_contender(
                        key, url, redis.url if redis else "", size, mode, tmp_dir / "logs"
                    )
                except (BenchError, OSError) as exc:
                    log(f"  {key} failed: {exc}")
                    results["errors"][key] = str(exc)[-1500:]
            if size["agent_requests"] and not args.no_agents:
                log("agent batch:")
                try:
                    results["agents"] = bench_agents(url, size, tmp_dir / "logs")
                except (BenchError, OSError) as exc:
                    log(f"  agent batch failed: {exc}")
                    results["errors"]["agents"] = str(exc)[-1500:]
            log("codec:")
            results["codec"] = codec.run(size["codec_ops"])
        except Exception:
            traceback.print_exc()
            results["errors"]["run"] = traceback.format_exc()[-2000:]
        finally:
            if redis is not None:
                redis.stop()
            if rabbit is not None:
                rabbit.stop()
    results["wall_seconds"] = time.monotonic() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    (args.out / "latest.md").write_text(table)
    report.chart(results, args.out / "latest.png")
    print(table)
    return 1 if "run" in results["errors"] else 0


def _rabbit_version() -> str | None:
    # The package's version: rabbitmqctl would take seconds to boot an Erlang VM to say it.
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
