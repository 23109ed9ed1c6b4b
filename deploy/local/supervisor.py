"""The lifecycle every local server shares: start a child, wait until it answers, stop, kill.

A server never outlives its owner process: stop() runs at exit for every server still claiming
a data dir, and a later start on the same data dir kills what a crashed owner left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from agentqueue.deploy.local.ports import HOST
from agentqueue.deploy.local.process import (
    ServerStartError,
    end_child,
    kill_leftovers,
    log_tail,
    spawn_child,
)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_LIVE: dict[Path, _Stoppable] = {}
_LIVE_LOCK = threading.Lock()


def claim_data_dir(data_dir: Path, server: _Stoppable) -> None:
    """Mark data_dir as used by a running server of this process; raise if another has it."""
    with _LIVE_LOCK:
        holder = _LIVE.get(data_dir)
        if holder is not None and holder is not server:
            raise ServerStartError(
                f"data dir {data_dir} is already used by a running {holder!r} in this process; "
                "stop it first or give this server another data dir"
            )
        _LIVE[data_dir] = server


def release_data_dir(data_dir: Path, server: _Stoppable) -> None:
    """Forget that server uses data_dir."""
    with _LIVE_LOCK:
        if _LIVE.get(data_dir) is server:
            del _LIVE[data_dir]


@atexit.register
def _stop_all_at_exit() -> None:
    # Servers are children of this process: never leave one running after it exits.
    with _LIVE_LOCK:
        servers = list(_LIVE.values())
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class StartStop:
    """`with server:` starts the server and stops it on the way out."""

    def start(self) -> Self:
        """Start serving and return once the server answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalServer(StartStop):
    """A private server on 127.0.0.1 kept as a child process; subclasses say how to run it."""

    #: What start() waits for, as in "did not <ready_when> on host:port".
    ready_when = "answer"
    start_timeout: float = 60
    stop_timeout: float = 30
    poll_interval = 0.05
    #: False for a helper (epmd) that lives in its owner's data dir and claim.
    owns_data_dir = True

    def __init__(self, data_dir: Path, port: int) -> None:
        """Describe a server on port that keeps its files in data_dir."""
        self.data_dir = data_dir
        self.port = port
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    # --- what each server defines ---------------------------------------------------------

    def _describe(self) -> str:
        """Name the server in errors, e.g. 'redis-server on port 6380'."""
        raise NotImplementedError

    def _check_installed(self) -> None:
        """Raise ServerNotInstalledError unless the server's programs exist."""

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """Write the server's files and return its argv and environment."""
        raise NotImplementedError

    def _probe(self) -> None:
        """Return once the server serves; raise OSError while it does not yet."""
        raise NotImplementedError

    @property
    def output_log(self) -> Path:
        """Where the child's stdout and stderr go."""
        return self.data_dir / "stdout.log"

    @property
    def log_file(self) -> Path:
        """The log a user should read when the server fails."""
        return self.output_log

    @property
    def _failure_log(self) -> Path:
        # The log whose tail a start-up error shows.
        return self.output_log

    def _before_spawn(self) -> None:
        """Start what the server needs running first (epmd)."""

    def _after_end(self) -> None:
        """Stop what _before_spawn started."""

    # --- the shared lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server's process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's pid (it leads its own process group), None before launch."""
        return self._proc.pid if self._proc is not None else None

    def launch(self) -> None:
        """Start the server's process without waiting for it to answer."""
        if self.running:
            return
        self._check_installed()  # fail early, before touching the data dir, if not installed
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.owns_data_dir:
            claim_data_dir(self.data_dir, self)
        try:
            if self.owns_data_dir:
                kill_leftovers(self.data_dir)
            argv, env = self._prepare()
            self._before_spawn()
            self._started_at = time.monotonic()
            self._proc = spawn_child(
                argv, env=env, cwd=self.data_dir, log_path=self.output_log, marker=self.data_dir
            )
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float, *, from_now: bool = False) -> None:
        """Block until the server answers, counting timeout from launch (or from now)."""
        assert self._proc is not None, "launch() first"
        if from_now:
            self._started_at = time.monotonic()
        deadline = self._started_at + timeout
        last_error: OSError | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                self.kill()
                raise ServerStartError(
                    f"{self._describe()} exited with code {code} during start-up; see "
                    f"{self.log_file}. Last output:\n{log_tail(self._failure_log)}"
                )
            try:
                self._probe()
                self.last_start_seconds = time.monotonic() - self._started_at
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self._describe()} did not {self.ready_when} on {HOST}:{self.port} within "
                    f"{timeout}s (last error: {last_error}); raise the timeout or see "
                    f"{self.log_file}. Last output:\n{log_tail(self._failure_log)}"
                )
            time.sleep(self.poll_interval)

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and block until it answers."""
        if self.running:
            return self
        self.launch()
        self.wait_ready(self.start_timeout if timeout is None else timeout)
        return self

    def terminate(self) -> None:
        """Send SIGTERM without waiting, so several servers can shut down at once."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the server gracefully (SIGTERM), SIGKILL it after timeout, and wait for it."""
        if self._proc is not None:
            wait = self.stop_timeout if timeout is None else timeout
            end_child(self._proc, sig=signal.SIGTERM, timeout=wait)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server's whole process group at once, as a crash would."""
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGKILL, timeout=10)
        self._cleanup()

    def restart(self, timeout: float | None = None) -> Self:
        """Stop and start again on the same port, keeping the data."""
        self.stop()
        return self.start(timeout)

    def _cleanup(self) -> None:
        self._proc = None
        self._after_end()
        if self.owns_data_dir:
            # Port helpers (RabbitMQ's disk monitor shell, inet_gethost) may sit outside the
            # process group.
            with contextlib.suppress(ServerStartError):
                kill_leftovers(self.data_dir)
            release_data_dir(self.data_dir, self)
