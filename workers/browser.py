"""Browser sandboxes: Debian's Chromium inside bwrap, driven by Playwright from the worker.

Playwright's driver runs in the worker and starts, as its "browser executable", a small script
that joins the sandbox's cgroups and execs bwrap, which runs Chromium. Playwright speaks to it
over the pipes it passes (`--remote-debugging-pipe`, fds 3 and 4): no debugging port is opened
anywhere. Chromium cannot use its own sandbox as root, so it runs with `--no-sandbox`:
bubblewrap is the only barrier. It does not run under `RLIMIT_AS` (its address space is huge by
design); a memory cgroup caps it instead.

Network: the sandbox has none (`--unshare-net`). With an allow list, a relay on the sandbox's
loopback (`sandbox_launch.py`) carries Chromium's proxy traffic (`--proxy-server`) over a
bind-mounted unix socket to the worker's filtering proxy (`sandbox_proxy.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agentqueue.workers.browser_ops import run_op
from agentqueue.workers.errors import SandboxError
from agentqueue.workers.sandbox import SandboxConfig, base_interpreter, bwrap_prefix
from agentqueue.workers.sandbox_cgroups import memory_cgroup, pids_cgroup, release_cgroup
from agentqueue.workers.sandbox_proxy import FilteringProxy, NetworkPolicy

log = logging.getLogger("agentqueue.sandbox")

CHROMIUM = "/usr/bin/chromium"
LAUNCH = Path(__file__).with_name("sandbox_launch.py")
RELAY_PORT = 3128  # on the sandbox's own loopback; nothing of the host listens there
# Chromium is many processes of many threads; the pids cgroup counts threads.
BROWSER_PIDS_MAX = 1024
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # Chromium's sandbox cannot run as root: bubblewrap is the only barrier
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Refuse to start browsers when Debian's chromium is missing, saying how to install it."""
    if not os.access(CHROMIUM, os.X_OK):
        raise SandboxError(
            f"{CHROMIUM} is not installed: run scripts/setup.sh (Debian's chromium package)"
        )


class BrowserRuntime:
    """What a worker's browsers share: one Playwright driver and one filtering proxy."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self.policy = policy
        self.playwright: Any = None
        self.proxy: FilteringProxy | None = None
        self.socket_dir: Path | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the driver (and the proxy, with an allow list) once."""
        async with self._lock:
            if self.playwright is not None:
                return
            require_chromium()
            from playwright.async_api import async_playwright

            if not self.policy.none:
                # Short and private: a unix socket path has ~100 bytes, the root may not.
                # 0700 (mkdtemp's mode): the sandbox's user is the worker's outside its
                # namespace, and nobody else on the host may use the proxy.
                self.socket_dir = Path(tempfile.mkdtemp(prefix="aq-proxy-"))
                self.proxy = FilteringProxy(self.policy, self.socket_dir / "proxy.sock")
                await self.proxy.start()
            self.playwright = await async_playwright().start()

    async def close(self) -> None:
        """Stop the driver and the proxy."""
        if self.playwright is not None:
            with contextlib.suppress(Exception):
                await self.playwright.stop()
            self.playwright = None
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


def launcher_script(
    workspace: Path, config: SandboxConfig, cgroups: list[Path], socket_dir: Path | None
) -> str:
    """The shell script Playwright starts as Chromium: join the cgroups, exec bwrap."""
    binds = [("--ro-bind", str(LAUNCH), "/sandbox/launch.py")]
    for etc in ("/etc/fonts", "/etc/chromium.d", "/etc/chromium"):
        if os.path.isdir(etc):  # fontconfig and Debian's chromium wrapper read these
            binds.append(("--ro-bind", etc, etc))
    if socket_dir is not None:
        binds.append(("--ro-bind", str(socket_dir), "/run/proxy"))
    argv = bwrap_prefix(workspace, config, binds)
    argv += ["--setenv", "XDG_CACHE_HOME", "/tmp/cache"]
    python = base_interpreter()
    socket = "/run/proxy/proxy.sock" if socket_dir is not None else "-"
    argv += [python, "-I", "-S", "/sandbox/launch.py", socket, str(RELAY_PORT), "--", CHROMIUM]
    argv += ["--user-data-dir=/tmp/profile"]  # fresh per sandbox, on its private /tmp
    if socket_dir is not None:
        # `<-loopback>` sends 127.0.0.1 through the proxy too, which decides what it may reach.
        argv += [f"--proxy-server=http://127.0.0.1:{RELAY_PORT}", "--proxy-bypass-list=<-loopback>"]
    joins = "".join(
        f"echo $$ > {shlex.quote(str(g / 'cgroup.procs'))} || exit 111\n" for g in cgroups
    )
    return (
        "#!/bin/sh\n"
        + joins
        # Playwright names a profile directory on the host; the sandbox has its own.
        + 'for a; do shift; case "$a" in --user-data-dir=*) ;; *) set -- "$@" "$a";; esac; done\n'
        + f'exec {shlex.join(argv)} "$@"\n'
    )


class BrowserBox:
    """One sandboxed Chromium with the session's browser context; requests run one at a time."""

    def __init__(
        self, workspace: Path, browser: Any, context: Any, cgroups: list[Path], rundir: Path
    ) -> None:
        self.workspace = workspace
        self.browser = browser
        self.context = context
        self.cgroups = cgroups
        self.rundir = rundir
        self.current = 0  # index of the selected tab in context.pages
        self.last_used = time.monotonic()
        self.from_pool = False
        self.lock = asyncio.Lock()

    @classmethod
    async def start(
        cls,
        workspace: Path,
        config: SandboxConfig,
        runtime: BrowserRuntime,
        viewport: tuple[int, int],
    ) -> BrowserBox:
        """Start Chromium in bwrap over `workspace` and open the session's context and a tab."""
        await runtime.start()
        await asyncio.to_thread(workspace.mkdir, parents=True, exist_ok=True)
        cgroups = [await asyncio.to_thread(pids_cgroup, max(config.pids_max, BROWSER_PIDS_MAX))]
        memory = await asyncio.to_thread(memory_cgroup, config.memory_max, cgroups[0])
        if memory is not None:
            cgroups.append(memory)
        rundir = Path(tempfile.mkdtemp(prefix="aq-browser-"))
        try:
            script = rundir / "chromium"
            script.write_text(launcher_script(workspace, config, cgroups, runtime.socket_dir))
            script.chmod(0o700)
            browser = await runtime.playwright.chromium.launch(
                executable_path=str(script),
                args=CHROMIUM_FLAGS,
                headless=True,
                env={"PATH": "/usr/bin:/bin"},  # the worker's environment never reaches bwrap
                timeout=config.call_timeout * 1000,
            )
            context = await browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=False
            )
            context.set_default_timeout(config.call_timeout * 1000 * 0.8)
            await context.new_page()
            return cls(workspace, browser, context, cgroups, rundir)
        except BaseException as exc:
            for group in cgroups:
                with contextlib.suppress(OSError, TimeoutError):
                    await asyncio.shield(release_cgroup(group))
            shutil.rmtree(rundir, ignore_errors=True)
            if isinstance(exc, Exception) and not isinstance(exc, SandboxError):
                raise SandboxError(f"browser sandbox failed to start: {first_line(exc)}") from None
            raise

    @property
    def alive(self) -> bool:
        """Whether Chromium is still connected."""
        return bool(self.browser.is_connected())

    async def request(self, op: str, args: dict[str, object], timeout: float) -> tuple[bool, Any]:
        """Run one browser operation; past `timeout` the browser is closed, SandboxError raised."""
        async with self.lock:
            self.last_used = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    output = await run_op(self, op, args)
            except TimeoutError:
                await self.close()
                raise SandboxError(
                    f"{op} was stopped after the sandbox's wall-clock limit of {timeout} s;"
                    " the browser was restarted (pages and cookies lost)"
                ) from None
            except SandboxError as exc:
                return False, str(exc)
            except Exception as exc:  # Playwright's own errors: the first line says what failed
                if not self.alive:
                    await self.close()
                    raise SandboxError(
                        f"{op} ended the browser ({first_line(exc)}); the browser was restarted"
                        " (pages and cookies lost)"
                    ) from None
                return False, f"{op} failed: {first_line(exc)}"
            finally:
                self.last_used = time.monotonic()
            return True, output

    async def close(self) -> None:
        """Close Chromium, kill whatever is left in its cgroups, remove its launcher."""
        with contextlib.suppress(Exception):
            await self.browser.close()
        for group in self.cgroups:
            with contextlib.suppress(OSError, TimeoutError):
                await release_cgroup(group)
        shutil.rmtree(self.rundir, ignore_errors=True)


def first_line(exc: BaseException) -> str:
    """An error's first line (Playwright appends call logs and browser logs below it)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
