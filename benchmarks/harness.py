"""Processes of a benchmark run: the broker, Redis, worker processes and client processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentqueue.deploy.local.ports import free_port
from agentqueue.deploy.local.process import end_child, spawn_child
from benchmarks.contenders.common import PYTHON, BenchEnv

ROOT = Path(__file__).resolve().parent.parent
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """A worker or client process of the benchmark failed."""


def base_environ(
    env: BenchEnv, extra: dict[str, str] | None = None, root: Path = ROOT
) -> dict[str, str]:
    """The environment of worker and client processes: offline, repo importable, env vars set."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "OPENAI_"))}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH")]))
    environ["AGENTQUEUE_MODEL"] = "scripted"
    environ.update(env.as_environ())
    environ.update(extra or {})
    return environ


class LocalRedisServer:
    """A throw-away redis-server on 127.0.0.1 for Taskiq's result backend (no persistence)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedisServer:
        """Start redis-server and wait until it answers PING."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", str(self.data_dir)]  # fmt: skip
        self.proc = spawn_child(
            argv,
            env=dict(os.environ),
            cwd=self.data_dir,
            log_path=self.data_dir / "redis.log",
            marker=self.data_dir,
        )
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"redis-server on port {self.port} did not start; see {self.data_dir}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None:
            end_child(self.proc, sig=signal.SIGTERM, timeout=5)
            self.proc = None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(entry: Path) -> tuple[int, int]:
    """(process group, utime + stime ticks) of the process whose /proc directory is entry."""
    fields = (entry / "stat").read_text().rpartition(")")[2].split()
    return int(fields[2]), int(fields[11]) + int(fields[12])


def group_pids(pgid: int) -> list[int]:
    """The live processes of a process group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _cpu_ticks(entry)[0] == pgid:
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by the live processes of a process group."""
    return process_cpu_seconds(group_pids(pgid))


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system) used so far by the given processes (those gone count 0)."""
    ticks = 0
    for pid in pids:
        try:
            ticks += _cpu_ticks(Path(f"/proc/{pid}"))[1]
        except (OSError, IndexError, ValueError):
            continue
    return ticks / CLOCK_TICKS


def runqueue_seconds(pids: Iterable[int]) -> float:
    """Time the live threads of the given processes spent ready to run but waiting for a CPU
    (/proc schedstat): on a shared machine, how much the others' load held them back."""
    ns = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                ns += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return ns / 1e9


def _group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group, in MB."""
    total_kb = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) != pgid:  # the field after state and ppid is the process group
                continue
            total_kb += int((entry / "statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return total_kb / 1024


class Workers:
    """Worker processes of one contender, each in its own process group, logging to files."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        env: BenchEnv,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        root: Path = ROOT,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        environ = base_environ(env, extra_env, root)
        self.started_at = time.monotonic()
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, argv in enumerate(commands):
            log = (log_dir / f"worker-{i}.log").open("ab")
            self.procs.append(
                subprocess.Popen(
                    list(argv),
                    env=environ,
                    cwd=root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            log.close()

    @property
    def pids(self) -> list[int]:
        """The pids of the worker processes (each leads its own process group)."""
        return [p.pid for p in self.procs]

    def check(self) -> None:
        """Raise if a worker process has exited."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                tail = (self.log_dir / f"worker-{i}.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"worker {i} exited with {proc.returncode}:\n{tail}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by all worker processes: on a busy machine a steadier measure
        of the cost of an event than the wall clock."""
        return sum(group_cpu_seconds(p.pid) for p in self.procs)

    def rss_mb(self) -> float:
        """Resident memory of all worker processes and their children, in MB."""
        return sum(_group_rss_mb(p.pid) for p in self.procs)

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after a few seconds."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            # A worker's graceful drain is not what is measured: give it a moment, then kill.
            end_child(proc, sig=signal.SIGTERM, timeout=3)


class RssSampler:
    """Samples the workers' resident memory in a thread; `peak_mb` after the block."""

    def __init__(self, workers: Workers, interval: float = 0.1) -> None:
        self.workers = workers
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.workers.rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_client(
    key: str,
    job: str,
    params: dict[str, Any],
    env: BenchEnv,
    *,
    timeout: float = 600,
    workers: Workers | None = None,
    extra_env: dict[str, str] | None = None,
    root: Path = ROOT,
    python: str = PYTHON,
) -> dict[str, Any]:
    """Run `python -m benchmarks.client key job params` and return its JSON result (`root`,
    `python`: another checkout and its interpreter, e.g. the baseline of a change)."""
    argv = [python, "-m", "benchmarks.client", key, job, json.dumps(params)]
    proc = subprocess.Popen(
        argv,
        env=base_environ(env, extra_env, root),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_child(proc, sig=signal.SIGTERM, timeout=3)
        raise BenchError(f"{key} {job} took over {timeout:.0f} s; stopped it") from None
    if proc.returncode != 0:
        if workers is not None:
            workers.check()
        tail = err.decode(errors="replace")[-3000:]
        raise BenchError(f"{key} {job} client exited with {proc.returncode}:\n{tail}")
    lines = out.decode().strip().splitlines()
    if not lines:
        raise BenchError(f"{key} {job} client printed no result; stderr:\n{err.decode()[-2000:]}")
    return json.loads(lines[-1])
