"""Run every benchmark job through every contender against one private RabbitMQ.

    uv run --group bench python benchmarks/run.py            # full run (about 15 minutes)
    uv run --group bench python benchmarks/run.py --quick    # about a minute
    uv run --group bench python benchmarks/run.py --smoke --broker amqp://...   # shape check

Clients and workers run in separate processes. The contenders run interleaved: every round runs
each job once per contender (their order rotated from round to round), so a busy moment of the
machine falls on all of them alike; the table shows the median of the rounds with its min–max,
and each ratio to raw aio-pika is the median of the ratios within the same rounds. The load
average is recorded at the start, at the end and at each round. Results go to
benchmarks/results/latest.json, latest.md (the table) and latest.png; `--label` names a run made
on a busy machine in the table's title.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from benchmarks.contenders.common import PYTHON, BenchEnv
from benchmarks.harness import (
    ROOT,
    BenchError,
    LocalRedisServer,
    RssSampler,
    Workers,
    run_client,
)

RESULTS = ROOT / "benchmarks" / "results"
ALL = ["raw", "agentqueue", "agentqueue-signed", "celery", "taskiq", "faststream"]
# A contender run a second time with other settings: key -> (module key, name suffix, env).
VARIANTS: dict[str, tuple[str, str, dict[str, str]]] = {
    "agentqueue-signed": (
        "agentqueue",
        " (signed)",
        {"AGENTQUEUE_SIGNING_KEYS": "bench:" + "s" * 32},
    ),
}
# Every round runs each job once per contender; the table shows the median of the rounds.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "rounds": 5,
        "calls": 200,
        "requests": 5000,
        "inflight": 256,
        "sessions": 250,
        "events": 20,
        "agent_requests": 2000,
        "agent_inprocess": 300,
        "agent_inflight": 64,
        "codec_ops": 200_000,
    },
    "quick": {
        "rounds": 3,
        "calls": 50,
        "requests": 1000,
        "inflight": 256,
        "sessions": 50,
        "events": 10,
        "agent_requests": 100,
        "agent_inprocess": 50,
        "agent_inflight": 32,
        "codec_ops": 20_000,
    },
    "smoke": {
        "rounds": 1,
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
# The figure of each job that the rounds are summarised by (median, spread, ratio to raw).
METRICS = {
    "latency": ("p50_ms", "p99_ms"),
    "pipelined": ("rps", "worker_cpu_us_per_event"),
    "ordered": ("rps", "worker_cpu_us_per_event"),
}


_T0 = time.monotonic()


def log(text: str) -> None:
    """Progress on stderr (with seconds since start), so stdout stays the table."""
    print(f"[{time.monotonic() - _T0:6.1f}] {text}", file=sys.stderr, flush=True)


BASELINE = "agentqueue@"  # + a checkout's directory name: agentqueue run from that checkout


class Entrant:
    """One contender of a run: its module, its settings, its workers and its rounds."""

    def __init__(self, key: str, baselines: dict[str, Path] | None = None) -> None:
        base, suffix, extra = VARIANTS.get(key, (key.partition("@")[0], "", {}))
        if "+" in key:  # agentqueue+NAME=VALUE: agentqueue with one setting changed
            base, _, setting = key.partition("+")
            name, _, value = setting.partition("=")
            suffix, extra = f" ({setting})", {name: value}
        self.key, self.module_key, self.extra_env = key, base, extra
        self.module = contender(base)
        # A baseline runs agentqueue from another checkout (with its own .venv), its workers
        # and client both, so a change is measured against its parent within the same rounds.
        self.root, self.python = ROOT, PYTHON
        if key.startswith(BASELINE):
            root = (baselines or {})[key]
            self.root, self.python = root, str(root / ".venv" / "bin" / "python")
            suffix = f" ({root.name}: {_commit(root)})"
        config = self.module.CONFIG + "".join(
            "; envelopes signed (AGENTQUEUE_SIGNING_KEYS)"
            if name == "AGENTQUEUE_SIGNING_KEYS"
            else f"; {name}={value}"
            for name, value in extra.items()
        )
        self.result: dict[str, Any] = {"name": self.module.NAME + suffix, "config": config}
        self.rounds: dict[str, list[dict[str, Any]]] = {job: [] for job in METRICS}
        self.workers: Workers | None = None
        self.env: BenchEnv | None = None
        self.rss_load_mb = 0.0

    def start(self, url: str, redis_url: str, count: int, logs: Path, prefix: str) -> float:
        """Start `count` workers on a fresh namespace; seconds until the first answer."""
        self.env = BenchEnv(url, f"{prefix}{self.key[:4]}{new_id()[:6]}", redis_url)
        commands = [
            [self.python if arg == PYTHON else arg for arg in argv]
            for argv in self.module.worker_commands(self.env, count)
        ]
        self.workers = Workers(
            commands, self.env, logs / self.key / prefix, extra_env=self.extra_env, root=self.root
        )
        ready = self.client("ready", {}, timeout=120)
        return float(ready["first_answer_at"] - self.workers.started_at)

    def client(self, job: str, params: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """Run one job's client against this entrant's workers."""
        assert self.env is not None
        return run_client(
            self.module_key,
            job,
            params,
            self.env,
            workers=self.workers,
            timeout=timeout,
            extra_env=self.extra_env,
            root=self.root,
            python=self.python,
        )

    def stop(self) -> None:
        """Stop this entrant's workers."""
        if self.workers is not None:
            self.workers.stop()
            self.workers = None


def run_rounds(
    entrants: list[Entrant],
    jobs: list[tuple[str, dict[str, Any]]],
    rounds: int,
    errors: dict[str, str],
    schedule: list[dict[str, Any]],
) -> None:
    """Each round runs every job once per entrant, the entrants' order rotated each round."""
    for r in range(rounds):
        alive = [e for e in entrants if e.key not in errors]
        shift = r % len(alive) if alive else 0
        order = alive[shift:] + alive[:shift]
        schedule.append(
            {
                "round": r + 1,
                "jobs": [job for job, _ in jobs],
                "order": [e.key for e in order],
                "load_average_1m": os.getloadavg()[0],
            }
        )
        for job, params in jobs:
            log(f"round {r + 1}/{rounds} {job}: {', '.join(e.key for e in order)}")
            for entrant in order:
                if entrant.key in errors:
                    continue
                try:
                    assert entrant.workers is not None
                    cpu = entrant.workers.cpu_seconds()
                    with RssSampler(entrant.workers) as sampler:
                        result = entrant.client(job, params)
                    cpu = entrant.workers.cpu_seconds() - cpu
                    events = result.get("requests") or result.get("calls")
                    if events:  # warm-up calls included: they are few
                        result["worker_cpu_us_per_event"] = cpu / events * 1e6
                    entrant.rounds[job].append({"round": r + 1, **result})
                    entrant.rss_load_mb = max(entrant.rss_load_mb, sampler.peak_mb)
                except (BenchError, OSError) as exc:
                    log(f"  {entrant.key} failed: {exc}")
                    errors[entrant.key] = str(exc)[-1500:]
                    entrant.stop()


def start_all(
    entrants: list[Entrant],
    url: str,
    redis_url: str,
    count: int,
    logs: Path,
    prefix: str,
    errors: dict[str, str],
) -> dict[str, float]:
    """Start every entrant's workers, one entrant after another (start-up times stay apart)."""
    startup: dict[str, float] = {}
    for entrant in entrants:
        if entrant.key in errors:
            continue
        log(f"  {entrant.key}: starting {count} worker(s)")
        try:
            startup[entrant.key] = entrant.start(url, redis_url, count, logs, prefix)
        except (BenchError, OSError) as exc:
            log(f"  {entrant.key} failed: {exc}")
            errors[entrant.key] = str(exc)[-1500:]
            entrant.stop()
    return startup


def bench_contenders(
    keys: list[str],
    url: str,
    redis_url: str,
    size: dict[str, Any],
    logs: Path,
    baselines: dict[str, Path] | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """Jobs 1-3 and the footprint (job 6) of every contender, in interleaved rounds."""
    entrants = [Entrant(key, baselines) for key in keys]
    errors: dict[str, str] = {}
    schedule: list[dict[str, Any]] = []
    try:
        log("echo workers (1 per contender):")
        startup = start_all(entrants, url, redis_url, 1, logs, "b", errors)
        time.sleep(1.0)
        for entrant in entrants:
            if entrant.workers is not None:
                entrant.result["startup_s"] = startup[entrant.key]
                entrant.result["rss_idle_mb"] = entrant.workers.rss_mb()
        jobs: list[tuple[str, dict[str, Any]]] = []
        if size["calls"]:
            jobs.append(("latency", {"calls": size["calls"]}))
        jobs.append(("pipelined", {"requests": size["requests"], "inflight": size["inflight"]}))
        run_rounds(entrants, jobs, size["rounds"], errors, schedule)
    finally:
        for entrant in entrants:
            entrant.stop()
    if size["sessions"]:
        try:
            log("session-ordered workers (2 per contender):")
            start_all(entrants, url, redis_url, 2, logs, "o", errors)
            params = {
                "sessions": size["sessions"],
                "events": size["events"],
                "inflight": size["inflight"],
            }
            run_rounds(entrants, [("ordered", params)], size["rounds"], errors, schedule)
        finally:
            for entrant in entrants:
                entrant.stop()
    raw = next((e for e in entrants if e.key == "raw"), None)
    for entrant in entrants:
        entrant.result["rss_load_mb"] = entrant.rss_load_mb or None
        for job, rounds in entrant.rounds.items():
            if rounds:
                entrant.result[job] = summarise(job, rounds, raw.rounds[job] if raw else [])
    return {e.key: e.result for e in entrants if e.key not in errors}, errors, schedule


def summarise(
    job: str, rounds: list[dict[str, Any]], raw_rounds: list[dict[str, Any]]
) -> dict[str, Any]:
    """A job's rounds in one: medians with min and max, and ratios to raw from the same rounds."""
    summary: dict[str, Any] = {**rounds[-1], "rounds": rounds}
    summary.pop("round", None)
    raw_by_round = {r["round"]: r for r in raw_rounds}
    for metric in METRICS[job]:
        values = [r[metric] for r in rounds if metric in r]
        if not values:
            continue
        summary[metric] = statistics.median(values)
        summary[f"{metric}_min"], summary[f"{metric}_max"] = min(values), max(values)
        ratios = [r[metric] / raw_by_round[r["round"]][metric] for r in rounds
                  if metric in r and raw_by_round.get(r["round"], {}).get(metric)]  # fmt: skip
        if ratios:
            summary[f"{metric}_ratio"] = statistics.median(ratios)
            summary[f"{metric}_ratio_min"] = min(ratios)
            summary[f"{metric}_ratio_max"] = max(ratios)
    if "order_violations" in rounds[0]:
        summary["order_violations"] = sum(r["order_violations"] for r in rounds)
        summary["requests"] = sum(r["requests"] for r in rounds) // len(rounds)
    return summary


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
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        help="another checkout (with its .venv) to run as agentqueue@DIRNAME in the same rounds"
        " (repeatable)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also run agentqueue with this environment setting (repeatable), e.g. "
        "AGENTQUEUE_CONCURRENCY=256",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default: 5 full, 3 quick, 1 smoke)")
    parser.add_argument(
        "--label", default="", help="a note for the title, e.g. 'loaded machine, not for release'"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.rounds:
        size["rounds"] = args.rounds
    keys = args.only.split(",") if args.only else (["raw", "agentqueue"] if args.smoke else ALL)
    baselines = {BASELINE + path.name: path.resolve() for path in args.baseline}
    at = keys.index("agentqueue") + 1 if "agentqueue" in keys else 1
    keys[at:at] = [key for key in baselines if key not in keys]
    keys[at:at] = [f"agentqueue+{setting}" for setting in args.setting]

    from benchmarks import codec, report

    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode,
        "label": args.label,
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
            contenders, errors, schedule = bench_contenders(
                keys, url, redis.url if redis else "", size, tmp_dir / "logs", baselines
            )
            results["contenders"], results["rounds"] = contenders, schedule
            results["errors"].update(errors)
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


def _commit(root: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True, text=True
    )
    return done.stdout.strip() or "?"


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
