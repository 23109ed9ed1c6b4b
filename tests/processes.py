"""Start real `agentqueue worker` processes for tests, and stop them for sure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One `agentqueue worker` child; its log lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "agentqueue.cli", "worker", *args]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, timeout: float = 60) -> None:
        """Block until the worker logs that it is subscribed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(" serving " in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}:\n" + "\n".join(self.lines[-30:])
                )
            time.sleep(0.05)
        raise TimeoutError("worker did not start serving:\n" + "\n".join(self.lines[-30:]))

    def kill(self) -> None:
        """SIGKILL, like a machine going away."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the graceful exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def worker_args(
    app: str, url: str, ns: str, store: str, *, partitions: int = 2, balance: bool = True
) -> tuple[str, ...]:
    """`agentqueue worker` arguments: one app on a broker, a store and a namespace."""
    args = ("--app", app, "--broker", url, "--store", store, "--namespace", ns)
    args += ("--partition-count", str(partitions), "--tool-partition-count", str(partitions))
    return args if balance else (*args, "--no-balance")


@contextmanager
def workers(
    *specs: tuple[str, ...], env: dict[str, str] | None = None
) -> Iterator[list[WorkerProcess]]:
    """Start one worker per argument tuple; all are killed on the way out, whatever happened."""
    started: list[WorkerProcess] = []
    try:
        for args in specs:
            started.append(WorkerProcess(*args, env=env))
        for worker in started:
            worker.wait_serving()
        yield started
    finally:
        for worker in started:
            worker.kill()
