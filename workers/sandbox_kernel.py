"""Runs inside a base sandbox: one IPython kernel (ipykernel) and its client, both in the box.

The kernel's ZeroMQ sockets use the `ipc` transport on files in the sandbox's private `/tmp`:
the sandbox's network namespace is closed, and nothing outside it can reach those sockets. The
worker's site-packages are mounted read-only at /sandbox/site-packages (nothing is installed at
run time); the kernel is started with the server, so a pooled sandbox's kernel is already up.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jupyter_client.blocking import BlockingKernelClient

SITE = "/sandbox/site-packages"
RUNTIME = "/tmp/kernel"
CONNECTION = RUNTIME + "/kernel.json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class KernelDied(RuntimeError):
    """The kernel process ended: the sandbox must be replaced (its variables are gone)."""


class Kernel:
    """An ipykernel process and a blocking client over ipc sockets in /tmp/kernel."""

    def __init__(self) -> None:
        if SITE not in sys.path:
            sys.path.append(SITE)
        from jupyter_client.connect import write_connection_file

        os.makedirs(RUNTIME, exist_ok=True)
        write_connection_file(CONNECTION, transport="ipc", ip=RUNTIME + "/ipc")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/workspace",
            "PYTHONPATH": SITE,
            # Kernel state goes to the private /tmp, never into the session's workspace.
            "IPYTHONDIR": "/tmp/ipython",
            "JUPYTER_RUNTIME_DIR": RUNTIME,
            "JUPYTER_DATA_DIR": "/tmp/jupyter",
            "MPLCONFIGDIR": "/tmp/matplotlib",
            "MPLBACKEND": "Agg",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-s", "-m", "ipykernel_launcher", "-f", CONNECTION],
            cwd="/workspace",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open("/tmp/kernel.log", "wb"),
        )
        self.client: BlockingKernelClient | None = None
        self._failed: Exception | None = None
        # Connected beside the server's start-up; `wait_connected` joins it.
        self._connecting = threading.Thread(target=self._connect_quietly, daemon=True)
        self._connecting.start()

    def wait_connected(self) -> None:
        """Block until the client is connected or has failed (the first cell raises why)."""
        self._connecting.join()

    def _connect_quietly(self) -> None:
        try:
            self._connect()
        except Exception as exc:  # raised by the first cell, which waits for this thread
            self._failed = exc

    def _died(self) -> KernelDied:
        code = self.process.poll()
        return KernelDied(
            f"the IPython kernel died (exit code {code}, e.g. killed at the sandbox's memory"
            " limit or by os._exit); the sandbox was replaced: files kept, Python variables lost"
        )

    def _connect(self) -> None:
        from jupyter_client.blocking import BlockingKernelClient

        client = BlockingKernelClient(connection_file=CONNECTION)
        client.load_connection_file()
        client.start_channels()
        for _ in range(600):  # up to 60 s on a loaded machine; the worker's timeout is the ceiling
            if self.process.poll() is not None:
                raise self._died()
            try:
                client.wait_for_ready(timeout=0.1)
                break
            except RuntimeError:
                continue
        else:
            raise KernelDied(
                "the IPython kernel did not answer within 60 s of its start; the sandbox was"
                " replaced: files kept, Python variables lost"
            )
        self.client = client

    def run(self, code: str) -> str:
        """Run one cell; its streams, results, displays and traceback as text."""
        self._connecting.join()
        if self.client is None:
            if isinstance(self._failed, KernelDied):
                raise self._failed
            raise KernelDied(
                f"the IPython kernel could not be reached ({self._failed}); the sandbox was"
                " replaced: files kept, Python variables lost"
            )
        client = self.client
        msg_id = client.execute(code, store_history=True, allow_stdin=False)
        parts: list[str] = []
        while True:
            try:
                msg = client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise self._died() from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text = content["data"].get("text/plain")
                if text is not None:
                    parts.append(text + "\n")
            elif kind == "error":
                parts.append(ANSI.sub("", "\n".join(content["traceback"])) + "\n")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(parts)
