"""A private RabbitMQ node on 127.0.0.1 for tests, benchmarks and the CLI.

Each node runs Debian's RabbitMQ as a child process with its own AMQP, distribution
and epmd ports, its own data dir and Erlang cookie, so it never meets a system node
or another private one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agentqueue.deploy.local.amqp_handshake import amqp_login
from agentqueue.deploy.local.epmd import Epmd
from agentqueue.deploy.local.erlang_vm import node_command
from agentqueue.deploy.local.ports import HOST, free_ports
from agentqueue.deploy.local.process import clean_env, require_program
from agentqueue.deploy.local.supervisor import LocalServer

RABBITMQ_BIN_DIR = Path("/usr/lib/rabbitmq/bin")

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class RabbitMQCtlError(RuntimeError):
    """A rabbitmqctl command against a local node exited with an error."""


def default_node_name(data_dir: Path) -> str:
    """A node name stable per data dir, because Mnesia keeps its data under the node name."""
    return "aq-" + hashlib.sha1(str(data_dir).encode(), usedforsecurity=False).hexdigest()[:10]


class LocalRabbitMQ(LocalServer):
    """One private RabbitMQ node on 127.0.0.1 with its own ports, data dir and Erlang cookie."""

    ready_when = "accept AMQP"

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        name: str | None = None,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        cookie: str | None = None,
        memory_limit_mb: int = 2048,
        plugins: Sequence[str] = (),
        extra_config: str = "",
        bin_dir: Path = RABBITMQ_BIN_DIR,
    ) -> None:
        """Describe a node; port None picks a free port, epmd_port None runs a private epmd."""
        super().__init__(Path(data_dir).resolve(), 0)
        self.name = name or default_node_name(self.data_dir)
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"node name {self.name!r} is not usable; use 1-200 letters, digits, '-' or '_'"
            )
        if memory_limit_mb < 64:
            raise ValueError(f"memory_limit_mb={memory_limit_mb} is too small; give at least 64")
        picked = iter(free_ports(3))
        self.port = port or next(picked)
        self.dist_port = dist_port or next(picked)
        # Without a given epmd port the node runs (and owns) a private epmd.
        self._epmd = Epmd(self.data_dir, next(picked)) if epmd_port is None else None
        self.epmd_port = self._epmd.port if self._epmd is not None else epmd_port
        self.cookie = cookie
        self.memory_limit_mb = memory_limit_mb
        self.plugins = tuple(plugins)
        self.extra_config = extra_config
        self.bin_dir = Path(bin_dir)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRabbitMQ({self.node_name}, port={self.port}, {state})"

    def _describe(self) -> str:
        return f"RabbitMQ node {self.node_name}"

    @property
    def node_name(self) -> str:
        """The Erlang node name, e.g. 'aq-1a2b3c4d5e@localhost'."""
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """AMQP URL of this node with the default guest login."""
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    @property
    def log_file(self) -> Path:
        """RabbitMQ's own log file for this node."""
        return self.data_dir / "log" / f"{self.node_name}.log"

    @property
    def output_log(self) -> Path:
        """The node's stdout and stderr."""
        return self.data_dir / "log" / "stdout.log"

    def _env(self) -> dict[str, str]:
        d = self.data_dir
        return {
            **clean_env(),
            # HOME is where both the node and rabbitmqctl look for .erlang.cookie.
            "HOME": str(d),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_MAX_ETS_TABLES": "50000",
            "ERL_MAX_PORTS": "65536",
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            # Point every file RabbitMQ would read from /etc at our dir (they need not exist).
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            # The CLI must not spawn a lasting epmd of its own when the node is down, and
            # port 0 keeps concurrent CLI calls off RabbitMQ's small fixed port range.
            "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
        }

    def _server_script(self) -> Path:
        return require_program(self.bin_dir / "rabbitmq-server", "rabbitmq-server")

    def _check_installed(self) -> None:
        self._server_script()

    def _write_files(self) -> None:
        d = self.data_dir
        (d / "log").mkdir(parents=True, exist_ok=True)
        cookie_file = d / ".erlang.cookie"
        if self.cookie is not None or not cookie_file.exists():
            cookie = self.cookie or secrets.token_hex(16).upper()
            with contextlib.suppress(FileNotFoundError):
                cookie_file.unlink()
            # Erlang refuses a cookie file that others can read.
            fd = os.open(cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(cookie)
        memory_bytes = self.memory_limit_mb * 1024 * 1024
        conf = [
            f"listeners.tcp.default = {HOST}:{self.port}",
            "loopback_users = none",
            # A small disk must never block publishers in tests.
            "disk_free_limit.absolute = 50MB",
            f"vm_memory_high_watermark.absolute = {memory_bytes}",
            "log.console = false",
            "log.file.level = info",
        ]
        (d / "rabbitmq.conf").write_text("\n".join(conf) + "\n" + self.extra_config + "\n")
        (d / "enabled_plugins").write_text("[" + ",".join(self.plugins) + "].\n")

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        self._write_files()
        argv, extra_env = node_command(self._server_script(), self.plugins, self.data_dir)
        return argv, {**self._env(), **extra_env}

    def _probe(self) -> None:
        amqp_login(self.port, timeout=2)

    def _before_spawn(self) -> None:
        if self._epmd is not None:
            self._epmd.start()

    def _after_end(self) -> None:
        if self._epmd is not None:
            self._epmd.stop()

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run rabbitmqctl against this node and return its stdout."""
        ctl = require_program(self.bin_dir / "rabbitmqctl", "rabbitmqctl")
        argv = [str(ctl), "-n", self.node_name, *args]
        try:
            done = subprocess.run(
                argv, env=self._env(), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQCtlError(
                f"rabbitmqctl {' '.join(args)} against {self.node_name} took over {timeout}s; "
                "is the node running? raise the timeout for slow commands"
            ) from exc
        if done.returncode != 0:
            raise RabbitMQCtlError(
                f"rabbitmqctl {' '.join(args)} against {self.node_name} exited with "
                f"{done.returncode}:\n{(done.stderr or done.stdout).strip()}"
            )
        return done.stdout
