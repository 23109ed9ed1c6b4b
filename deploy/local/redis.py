"""A private Redis server on 127.0.0.1 for tests, benchmarks and the CLI."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from agentqueue.deploy.local.rabbitmq import (
    HOST,
    ServerStartError,
    claim_data_dir,
    clean_env,
    end_child,
    free_port,
    kill_leftovers,
    log_tail,
    release_data_dir,
    require_program,
    spawn_child,
)


def redis_ping(port: int, *, host: str = HOST, timeout: float = 2.0) -> None:
    """Send PING and expect PONG; raise OSError if Redis is not serving yet."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)
    # While it loads the append-only file Redis answers "-LOADING ..." instead.
    if not reply.startswith(b"+PONG"):
        raise ConnectionError(f"Redis answered PING with {reply!r}")


def _quote(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalRedis:
    """One private redis-server on 127.0.0.1 with its own port and data dir, kept as a child."""

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        maxmemory_mb: int = 1024,
        extra_config: str = "",
        binary: Path | str | None = None,
    ) -> None:
        """Describe a server; port None picks a free port."""
        if maxmemory_mb < 16:
            raise ValueError(f"maxmemory_mb={maxmemory_mb} is too small; give at least 16")
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.maxmemory_mb = maxmemory_mb
        self.extra_config = extra_config
        self.binary = binary
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRedis(port={self.port}, {state})"

    @property
    def url(self) -> str:
        """Redis URL of database 0 on this server."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server's process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.data_dir / "redis.log"

    def _write_config(self) -> Path:
        conf = [
            f"bind {HOST}",
            f"port {self.port}",
            "protected-mode yes",
            # Stay in the foreground as our child, so it dies with us and kill() reaches it.
            "daemonize no",
            "supervised no",
            f"dir {_quote(self.data_dir)}",
            f"logfile {_quote(self.log_file)}",
            "appendonly yes",
            "appendfsync everysec",
            # AOF alone is the durability we test; RDB snapshots would only add forks.
            'save ""',
            f"maxmemory {self.maxmemory_mb}mb",
            # A full test server should fail loudly rather than drop keys.
            "maxmemory-policy noeviction",
            self.extra_config,
        ]
        path = self.data_dir / "redis.conf"
        path.write_text("\n".join(conf) + "\n")
        return path

    def start(self, timeout: float = 30) -> Self:
        """Start the server and block until it answers PING."""
        if self.running:
            return self
        binary = require_program(
            self.binary or shutil.which("redis-server") or "/usr/bin/redis-server", "redis-server"
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        claim_data_dir(self.data_dir, self)
        try:
            kill_leftovers(self.data_dir)
            conf = self._write_config()
            started = time.monotonic()
            self._proc = spawn_child(
                [str(binary), str(conf)],
                env=clean_env(),
                cwd=self.data_dir,
                log_path=self.data_dir / "stdout.log",
                marker=self.data_dir,
            )
            self._await_ready(started + timeout, timeout)
            self.last_start_seconds = time.monotonic() - started
        except BaseException:
            self.kill()
            raise
        return self

    def _await_ready(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        last_error: OSError | None = None
        while True:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"redis-server on port {self.port} exited with code {self._proc.returncode} "
                    f"during start-up. Log:\n{log_tail(self.log_file)}"
                )
            try:
                redis_ping(self.port)
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"redis-server did not answer PING on {HOST}:{self.port} within {timeout}s "
                    f"(last error: {last_error}); raise the timeout or see {self.log_file}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> None:
        """Stop the server gracefully (SIGTERM flushes the AOF), SIGKILL after timeout."""
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGTERM, timeout=timeout)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGKILL, timeout=10)
        self._cleanup()

    def restart(self, timeout: float = 30) -> Self:
        """Stop and start again on the same port, keeping the data."""
        self.stop()
        return self.start(timeout)

    def _cleanup(self) -> None:
        self._proc = None
        release_data_dir(self.data_dir, self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
