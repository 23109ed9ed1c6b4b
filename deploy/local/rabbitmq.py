"""Private RabbitMQ nodes and clusters on 127.0.0.1 for tests, benchmarks and the CLI.

Each node runs Debian's RabbitMQ as a child process with its own AMQP, distribution
and epmd ports, its own data dir and Erlang cookie, so it never meets a system node
or another private one. The child-process helpers here are shared with ``local_redis``.

A server never outlives its owner process: stop() runs at exit, and a server started from
the main thread also gets SIGTERM from the kernel if its owner dies without exiting
cleanly. A later start on the same data dir kills what a crashed owner left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

RABBITMQ_BIN_DIR = Path("/usr/lib/rabbitmq/bin")
HOST = "127.0.0.1"
MARKER_ENV = "AGENTQUEUE_LOCAL_SERVER"
OWNER_ENV = "AGENTQUEUE_LOCAL_SERVER_OWNER"
INSTALL_HINT = "run scripts/setup.sh (or: apt-get install -y rabbitmq-server redis-server)"

_PRELOAD = (
    'spawn(fun() -> code:ensure_modules_loaded([list_to_atom(filename:basename(F, ".beam"))'
    ' || F <- filelib:wildcard(os:getenv("RABBITMQ_PLUGINS_DIR") ++ "/*/ebin/*.beam")]) end).'
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_PR_SET_PDEATHSIG = 1
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1
_FRAME_END = 0xCE


class ServerNotInstalledError(RuntimeError):
    """A program that a local server needs is not installed on this machine."""


class ServerStartError(RuntimeError):
    """A local server exited during start-up or did not become ready in time."""


class RabbitMQCtlError(RuntimeError):
    """A rabbitmqctl command against a local node exited with an error."""


class AmqpRefusedError(ConnectionError):
    """The broker closed the AMQP connection during the handshake with a reply code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"broker refused the AMQP connection: {code} {text}")
        self.code = code
        self.text = text


# --- child-process helpers, shared with local_redis -----------------------------------


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


def free_ports(count: int = 1, host: str = HOST) -> list[int]:
    """Return count distinct TCP ports on host that are free right now."""
    sockets = []
    try:
        # Hold every socket open until all are bound, so the kernel cannot hand out one twice.
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = HOST) -> int:
    """Return one TCP port on host that is free right now."""
    return free_ports(1, host)[0]


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


# --- AMQP readiness check ---------------------------------------------------------------


def _shortstr(value: bytes) -> bytes:
    return struct.pack(">B", len(value)) + value


def _longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _method_frame(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", _FRAME_METHOD, 0, len(payload)) + payload + bytes([_FRAME_END])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the TCP connection during the AMQP handshake")
        data += chunk
    return data


def _expect_method(sock: socket.socket, class_id: int, method_id: int) -> bytes:
    while True:
        kind, _channel, size = struct.unpack(">BHI", _recv_exact(sock, 7))
        payload = _recv_exact(sock, size + 1)[:-1]
        if kind != _FRAME_METHOD:
            continue  # heartbeats
        got_class, got_method = struct.unpack(">HH", payload[:4])
        if (got_class, got_method) == (10, 50):  # connection.close
            code = struct.unpack(">H", payload[4:6])[0]
            text = payload[7 : 7 + payload[6]].decode(errors="replace")
            raise AmqpRefusedError(code, text)
        if (got_class, got_method) != (class_id, method_id):
            raise ConnectionError(
                f"expected AMQP method {class_id}.{method_id}, got {got_class}.{got_method}"
            )
        return payload[4:]


def amqp_login(
    port: int,
    *,
    host: str = HOST,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    timeout: float = 5.0,
) -> None:
    """Open and close one AMQP 0-9-1 connection; raise OSError if the broker won't have it."""
    # Asking for authentication_failure_close makes a wrong login a readable 403 instead of EOF.
    capabilities = _shortstr(b"authentication_failure_close") + b"t\x01"
    client_properties = _shortstr(b"capabilities") + b"F" + _longstr(capabilities)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_AMQP_HEADER)
        _expect_method(sock, 10, 10)  # connection.start
        response = b"\0" + user.encode() + b"\0" + password.encode()
        start_ok = (
            _longstr(client_properties)
            + _shortstr(b"PLAIN")
            + _longstr(response)
            + _shortstr(b"en_US")
        )
        sock.sendall(_method_frame(10, 11, start_ok))
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", _expect_method(sock, 10, 30)[:8])
        sock.sendall(_method_frame(10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        sock.sendall(_method_frame(10, 40, _shortstr(vhost.encode()) + _shortstr(b"") + b"\x00"))
        _expect_method(sock, 10, 41)  # connection.open-ok
        sock.sendall(_method_frame(10, 50, struct.pack(">H", 200) + _shortstr(b"") + b"\0\0\0\0"))
        _expect_method(sock, 10, 51)  # connection.close-ok


# --- RabbitMQ installation --------------------------------------------------------------


def _app_deps(app_file: Path) -> list[str]:
    text = app_file.read_text(errors="replace")
    deps: list[str] = []
    for key in ("applications", "included_applications", "optional_applications"):
        match = re.search(rf"\{{\s*{key}\s*,\s*\[([^\]]*)\]", text)
        if match:
            deps += [a.strip().strip("'") for a in match.group(1).split(",") if a.strip()]
    return deps


def _needed_apps(plugins_dir: Path, roots: Sequence[str]) -> list[Path] | None:
    """Return the dirs of roots and of the apps they need from plugins_dir, or None if unsure."""
    apps: dict[str, Path] = {}
    for entry in plugins_dir.iterdir():
        if (entry / "ebin").is_dir():
            apps.setdefault(entry.name.rsplit("-", 1)[0], entry)
    wanted: list[str] = []
    todo = list(roots)
    while todo:
        app = todo.pop()
        if app in wanted or app not in apps:
            continue  # not a RabbitMQ app: Erlang/OTP has it on its default path
        app_file = apps[app] / "ebin" / f"{app}.app"
        if not app_file.exists():
            return None
        wanted.append(app)
        todo += _app_deps(app_file)
    if "rabbit" not in wanted or "rabbitmq_prelaunch" not in wanted:
        return None
    return [apps[a] for a in sorted(wanted)]


def _link_apps(apps: Sequence[Path], link_dir: Path) -> None:
    """Make link_dir hold symlinks to exactly these app dirs."""
    link_dir.mkdir(parents=True, exist_ok=True)
    for old in link_dir.iterdir():
        old.unlink()
    for app in apps:
        (link_dir / app.name).symlink_to(app, target_is_directory=True)


# --- one node -----------------------------------------------------------------------------


class _Epmd:
    """A private epmd on 127.0.0.1, so nodes never register with a system or foreign epmd."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        epmd = require_program(shutil.which("epmd") or "/usr/bin/epmd", "epmd (Erlang port mapper)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = spawn_child(
            [str(epmd), "-port", str(self.port), "-address", HOST],
            env=clean_env(),
            cwd=self.data_dir,
            log_path=self.data_dir / "epmd.log",
            marker=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ServerStartError(
                    f"epmd on port {self.port} exited with code {self._proc.returncode}; is the "
                    f"port taken? log:\n{log_tail(self.data_dir / 'epmd.log')}"
                )
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(
                        f"epmd did not listen on {HOST}:{self.port} within {timeout}s"
                    ) from None
                time.sleep(0.01)

    def stop(self) -> None:
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGTERM, timeout=5)
            self._proc = None


def _default_name(data_dir: Path) -> str:
    # Stable per data dir, because Mnesia keeps its data under the node name.
    return "aq-" + hashlib.sha1(str(data_dir).encode(), usedforsecurity=False).hexdigest()[:10]


class LocalRabbitMQ:
    """One private RabbitMQ node on 127.0.0.1 with its own ports, data dir and Erlang cookie."""

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
        self.data_dir = Path(data_dir).resolve()
        self.name = name or _default_name(self.data_dir)
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
        self._epmd = _Epmd(next(picked), self.data_dir) if epmd_port is None else None
        self.epmd_port = self._epmd.port if self._epmd is not None else epmd_port
        self.cookie = cookie
        self.memory_limit_mb = memory_limit_mb
        self.plugins = tuple(plugins)
        self.extra_config = extra_config
        self.bin_dir = Path(bin_dir)
        self.last_start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalRabbitMQ({self.node_name}, port={self.port}, {state})"

    @property
    def node_name(self) -> str:
        """The Erlang node name, e.g. 'aq-1a2b3c4d5e@localhost'."""
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        """AMQP URL of this node with the default guest login."""
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_file(self) -> Path:
        """RabbitMQ's own log file for this node."""
        return self.data_dir / "log" / f"{self.node_name}.log"

    @property
    def _stdout_log(self) -> Path:
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

    def _command(self) -> tuple[list[str], dict[str, str]]:
        """Return the node's argv and the env it adds to _env()."""
        script = self._server_script()
        plugins_dir = script.resolve().parent.parent / "plugins"
        apps = (
            _needed_apps(plugins_dir, ["rabbit", *self.plugins]) if plugins_dir.is_dir() else None
        )
        erl = shutil.which("erl") or "/usr/lib/erlang/bin/erl"
        if apps is None or not Path(erl).exists():
            # Unknown layout: let RabbitMQ's own script start it, slower but sure.
            extra = "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
            return [str(script)], {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": extra}
        # What the rabbitmq-server script runs, minus two things. Its code path holds all
        # ~70 bundled plugins, and searching them for each of ~900 modules at boot more
        # than doubles the start-up time, so the node gets a plugins dir of links to the
        # apps it needs. And +stbt db binds schedulers to cores, which hurts when several
        # nodes share two cores.
        link_dir = self.data_dir / "plugins"
        _link_apps(apps, link_dir)
        env = {"ERL_LIBS": str(link_dir), "RABBITMQ_PLUGINS_DIR": str(link_dir)}
        argv = [
            erl,
            # Loading ~750 modules one by one is most of the boot; a helper process that
            # loads them in parallel up front takes about a fifth off on two cores.
            "-eval", _PRELOAD,
            "-noinput",
            "-s", "rabbit", "boot",
            "-boot", "start_sasl",
            "+W", "w",
            "+MBas", "ageffcbf", "+MHas", "ageffcbf",
            "+MBlmbcs", "512", "+MHlmbcs", "512", "+MMmcs", "30",
            "+P", "1048576", "+t", "5000000",
            "+zdbbl", "128000",
            # Busy-waiting schedulers would burn the few cores the tests have.
            "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none",
            "+B", "i",
            "-syslog", "logger", "[]",
            "-syslog", "syslog_error_logger", "false",
            "-kernel", "prevent_overlapping_partitions", "false",
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            "-start_epmd", "false",
        ]  # fmt: skip
        return argv, env

    def _launch(self) -> None:
        """Start the node's processes without waiting for it to accept connections."""
        if self.running:
            return
        self._server_script()  # fail early, before touching the data dir, if not installed
        claim_data_dir(self.data_dir, self)
        try:
            kill_leftovers(self.data_dir)
            self._write_files()
            argv, extra_env = self._command()
            if self._epmd is not None:
                self._epmd.start()
            env = {**self._env(), **extra_env}
            self._started_at = time.monotonic()
            self._proc = spawn_child(
                argv, env=env, cwd=self.data_dir, log_path=self._stdout_log, marker=self.data_dir
            )
        except BaseException:
            self._cleanup()
            raise

    def _await_ready(self, timeout: float) -> None:
        """Block until the node accepts an AMQP login, or raise ServerStartError."""
        assert self._proc is not None
        deadline = self._started_at + timeout
        last_error: BaseException | None = None
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._cleanup()
                raise ServerStartError(
                    f"RabbitMQ node {self.node_name} exited with code {code} during start-up; "
                    f"see {self.log_file}. Last output:\n{log_tail(self._stdout_log)}"
                )
            try:
                amqp_login(self.port, timeout=2)
                self.last_start_seconds = time.monotonic() - self._started_at
                return
            except OSError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"RabbitMQ node {self.node_name} did not accept AMQP on {HOST}:{self.port} "
                    f"within {timeout}s (last error: {last_error}); raise the timeout or see "
                    f"{self.log_file}. Last output:\n{log_tail(self._stdout_log)}"
                )
            time.sleep(0.05)

    def start(self, timeout: float = 60) -> Self:
        """Start the node and block until it accepts an AMQP login as guest."""
        if self.running:
            return self
        self._launch()
        self._await_ready(timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the node gracefully (SIGTERM), SIGKILL it after timeout, and wait for it."""
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGTERM, timeout=timeout)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the node's whole process group at once, as a crash would."""
        if self._proc is not None:
            end_child(self._proc, sig=signal.SIGKILL, timeout=10)
        self._cleanup()

    def restart(self, timeout: float = 60) -> Self:
        """Stop and start again on the same ports, keeping the data."""
        self.stop()
        return self.start(timeout)

    def _cleanup(self) -> None:
        self._proc = None
        if self._epmd is not None:
            self._epmd.stop()
        # Port helpers (disk monitor shell, inet_gethost) may sit outside the group.
        with contextlib.suppress(ServerStartError):
            kill_leftovers(self.data_dir)
        release_data_dir(self.data_dir, self)

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a cluster of nodes -----------------------------------------------------------------


class LocalRabbitMQCluster:
    """Several private RabbitMQ nodes on 127.0.0.1 joined into one cluster."""

    def __init__(
        self,
        data_dir: Path | str,
        nodes: int = 3,
        *,
        name: str | None = None,
        memory_limit_mb: int = 1024,
        extra_config: str = "",
    ) -> None:
        """Describe a cluster of nodes sharing one private epmd and one Erlang cookie."""
        if nodes < 1:
            raise ValueError(f"nodes={nodes} makes no cluster; give 1 or more")
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        base = name or _default_name(self.data_dir)
        self._epmd = _Epmd(free_port(), self.data_dir)
        cookie = self._cookie()
        self.nodes = [
            LocalRabbitMQ(
                self.data_dir / f"node{i}",
                name=f"{base}-{i}",
                epmd_port=self._epmd.port,
                cookie=cookie,
                memory_limit_mb=memory_limit_mb,
                extra_config=extra_config,
            )
            for i in range(nodes)
        ]

    def __repr__(self) -> str:
        return f"LocalRabbitMQCluster({[n.node_name for n in self.nodes]})"

    def _cookie(self) -> str:
        # Kept in the cluster dir so a later cluster object on the same dir can rejoin.
        path = self.data_dir / "cluster.cookie"
        if not path.exists():
            path.write_text(secrets.token_hex(16).upper())
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def urls(self) -> list[str]:
        """AMQP URLs of all nodes, in node order."""
        return [n.url for n in self.nodes]

    @property
    def running(self) -> bool:
        """True while every node's process is alive."""
        return all(n.running for n in self.nodes)

    def start(self, timeout: float = 120) -> Self:
        """Start every node (in parallel) and join nodes 1..n-1 to node 0."""
        claim_data_dir(self.data_dir, self)
        try:
            if not self._epmd.running:
                kill_leftovers(self.data_dir)
                self._epmd.start()
            # A node with no database yet has never joined; asking the others costs a
            # CLI run each, which is slow on a busy machine.
            fresh = [not (n.data_dir / "mnesia" / n.node_name).exists() for n in self.nodes]
            # Launch all first: restarted members wait for each other's tables at boot.
            for node in self.nodes:
                node._launch()
            for node in self.nodes:
                node._await_ready(timeout)
            seed = self.nodes[0]
            for node, new in zip(self.nodes[1:], fresh[1:], strict=True):
                if new or seed.node_name not in self._members(node):
                    node.ctl("stop_app")
                    node.ctl("join_cluster", seed.node_name)
                    node.ctl("start_app")
            for node in self.nodes:
                node._started_at = time.monotonic()
                node._await_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _members(self, node: LocalRabbitMQ) -> list[str]:
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("disk_nodes", [])) + list(status.get("ram_nodes", []))

    def running_nodes(self, i: int = 0) -> list[str]:
        """Node names that node i sees running in its cluster."""
        status = json.loads(self.nodes[i].ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def kill_node(self, i: int) -> None:
        """SIGKILL node i, as a crash would."""
        self.nodes[i].kill()

    def stop_node(self, i: int) -> None:
        """Stop node i gracefully."""
        self.nodes[i].stop()

    def start_node(self, i: int, timeout: float = 60) -> None:
        """Start node i again; it rejoins the cluster from its own data."""
        if not self._epmd.running:
            self._epmd.start()
        self.nodes[i].start(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop every node (SIGTERM to all at once) and the shared epmd."""
        procs = [n._proc for n in self.nodes if n._proc is not None and n._proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop(timeout)
        self._epmd.stop()
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
