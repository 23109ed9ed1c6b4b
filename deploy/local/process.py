"""Server child processes: spawn tied to their owner, find and kill leftovers, end them.

Every child carries a marker (its data dir) and its owner's pid in its environment, so a later
start on the same data dir finds what a crashed owner left behind and kills it. A child started
from the main thread also gets SIGTERM from the kernel if its owner dies without exiting cleanly.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MARKER_ENV = "AGENTQUEUE_LOCAL_SERVER"
OWNER_ENV = "AGENTQUEUE_LOCAL_SERVER_OWNER"
INSTALL_HINT = "run scripts/setup.sh (or: apt-get install -y rabbitmq-server redis-server)"

_PR_SET_PDEATHSIG = 1


class ServerNotInstalledError(RuntimeError):
    """A program that a local server needs is not installed on this machine."""


class ServerStartError(RuntimeError):
    """A local server exited during start-up or did not become ready in time."""


def require_program(path: Path | str, what: str) -> Path:
    """Return path if that program exists, else raise ServerNotInstalledError saying what to do."""
    if not Path(path).exists():
        raise ServerNotInstalledError(f"{what} is not installed (no {path}); {INSTALL_HINT}")
    return Path(path)


def clean_env() -> dict[str, str]:
    """This process's env without settings that would redirect a child server."""
    # Inherited RabbitMQ or Erlang settings (a node name, ERL_LIBS, ERL_FLAGS...) would
    # silently change which node we start or talk to; HOME decides the Erlang cookie.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RABBITMQ_", "ERL_", MARKER_ENV)) and k != "HOME"
    }


def _parent_death_hook(sig: int) -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child receive sig when this process dies."""
    # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so it is
    # only safe from the main thread; elsewhere the atexit hook has to do.
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the owner died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


def spawn_child(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    marker: Path,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session, logging to log_path and tagged with marker in its env."""
    env = {**env, MARKER_ENV: str(marker), OWNER_ENV: str(os.getpid())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_hook(death_signal),
        )


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    # The state letter follows the parenthesised command name; a zombie is as good as gone.
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _pid_gone(pid)


def marked_processes(marker: Path) -> dict[int, int]:
    """Map pid to owner pid for every process whose env carries this marker."""
    wanted = f"{MARKER_ENV}={marker}".encode()
    owner_prefix = f"{OWNER_ENV}=".encode()
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted not in env:
            continue
        owner = next((v[len(owner_prefix) :] for v in env if v.startswith(owner_prefix)), b"0")
        found[int(entry.name)] = int(owner or b"0")
    return found


def kill_leftovers(marker: Path, *, timeout: float = 10.0) -> list[int]:
    """SIGKILL processes left by a crashed earlier owner of marker; return their pids."""
    leftovers = marked_processes(marker)
    for pid, owner in leftovers.items():
        if owner != os.getpid() and _pid_alive(owner):
            raise ServerStartError(
                f"data dir {marker} is in use by server process {pid} of live process {owner}; "
                "stop that process or use another data dir"
            )
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not all(_pid_gone(pid) for pid in leftovers):
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"leftover processes {sorted(leftovers)} of {marker} survive SIGKILL"
            )
        time.sleep(0.02)
    return sorted(leftovers)


def end_child(proc: subprocess.Popen[bytes], *, sig: int, timeout: float) -> None:
    """Send sig to proc (SIGKILL: to its whole group), wait up to timeout, then SIGKILL all."""
    # The child leads its own session, so its pid is also its process group id.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def log_tail(path: Path, lines: int = 25) -> str:
    """Return the last lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
