"""A private Redis server on 127.0.0.1 for tests, benchmarks and the CLI."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from agentqueue.deploy.local.ports import HOST, free_port
from agentqueue.deploy.local.process import clean_env, require_program
from agentqueue.deploy.local.supervisor import LocalServer


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


class LocalRedis(LocalServer):
    """One private redis-server on 127.0.0.1 with its own port and data dir, kept as a child."""

    ready_when = "answer PING"
    start_timeout = 30
    poll_interval = 0.02

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
        super().__init__(Path(data_dir).resolve(), port or free_port())
        self.maxmemory_mb = maxmemory_mb
        self.extra_config = extra_config
        self.binary = binary

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRedis(port={self.port}, {state})"

    @property
    def url(self) -> str:
        """Redis URL of database 0 on this server."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.data_dir / "redis.log"

    @property
    def _failure_log(self) -> Path:
        # Redis writes its errors to its own log once it has read the config.
        return self.log_file

    def _describe(self) -> str:
        return f"redis-server on port {self.port}"

    def _program(self) -> Path:
        return require_program(
            self.binary or shutil.which("redis-server") or "/usr/bin/redis-server", "redis-server"
        )

    def _check_installed(self) -> None:
        self._program()

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        return [str(self._program()), str(self._write_config())], clean_env()

    def _probe(self) -> None:
        redis_ping(self.port)

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
