"""A private Erlang port mapper (epmd), so local nodes never meet a system or foreign epmd."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from agentqueue.deploy.local.ports import HOST
from agentqueue.deploy.local.process import clean_env, require_program
from agentqueue.deploy.local.supervisor import LocalServer


class Epmd(LocalServer):
    """An epmd on 127.0.0.1 living in its owner's data dir (a node's or a cluster's)."""

    ready_when = "listen"
    start_timeout = 10
    stop_timeout = 5
    poll_interval = 0.01
    owns_data_dir = False

    def __repr__(self) -> str:
        return f"Epmd(port={self.port})"

    def _describe(self) -> str:
        return f"epmd on port {self.port} (is the port taken?)"

    def _program(self) -> Path:
        return require_program(shutil.which("epmd") or "/usr/bin/epmd", "epmd (Erlang port mapper)")

    def _check_installed(self) -> None:
        self._program()

    @property
    def output_log(self) -> Path:
        """epmd's own output."""
        return self.data_dir / "epmd.log"

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        return [str(self._program()), "-port", str(self.port), "-address", HOST], clean_env()

    def _probe(self) -> None:
        socket.create_connection((HOST, self.port), timeout=1).close()
