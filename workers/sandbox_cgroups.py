"""The cgroups a sandbox runs in: pids (its process count) and memory, v1 or v2 hierarchies.

Workers run as root, and the kernel does not apply RLIMIT_NPROC to root, so the process count is
capped by a pids cgroup; memory by a memory cgroup (browsers cannot run under RLIMIT_AS at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import uuid
from pathlib import Path

from agentqueue.workers.errors import SandboxError

log = logging.getLogger(__name__)

PIDS_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))  # cgroup v1, then v2


def pids_cgroup(pids_max: int) -> Path:
    """A fresh pids cgroup limited to `pids_max` tasks; refused when none can be made."""
    for base in PIDS_ROOTS:
        v1 = base.name == "pids" and (base / "tasks").exists()
        v2 = (base / "cgroup.controllers").exists() and "pids" in (
            base / "cgroup.controllers"
        ).read_text().split()
        if v1 or v2:
            group = base / f"agentqueue-sandbox-{uuid.uuid4().hex[:12]}"
            try:
                group.mkdir()
                (group / "pids.max").write_text(f"{pids_max}\n")
            except OSError as exc:
                raise SandboxError(
                    f"cannot create a pids cgroup under {base} ({exc}): sandboxes need the pids"
                    " controller writable by the worker to cap their process count"
                ) from None
            return group
    raise SandboxError(
        f"no pids cgroup controller found under {', '.join(map(str, PIDS_ROOTS))}: sandboxes"
        " need it to cap their process count; mount the pids controller"
    )


async def release_cgroup(group: Path, within: float = 5.0) -> None:
    """Kill what is left in `group` (a child outliving bwrap), wait until empty, remove it."""
    procs = group / "cgroup.procs"
    async with asyncio.timeout(within):
        while True:
            try:
                pids = (await asyncio.to_thread(procs.read_text)).split()
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno == errno.ENODEV:  # removed while read: a dead cgroup's files say so
                    return
                raise
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            if not pids:
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(group.rmdir)
                return
            await asyncio.sleep(0.01)  # the kernel is reaping the killed tasks


MEMORY_ROOTS = (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup"))  # cgroup v1, then v2


def memory_cgroup(limit: int, pids_group: Path | None = None) -> Path | None:
    """A fresh memory cgroup capped at `limit` bytes, or None (logged loudly) when none can be.

    A sandbox past it has its biggest process killed by the kernel; the worker is not in it.
    On cgroup v2 a process is in one group per hierarchy: when `pids_group` is in the same one,
    the cap is written there and None returned (there is no second group to join).
    """
    for base in MEMORY_ROOTS:
        v1 = base.name == "memory" and (base / "memory.limit_in_bytes").exists()
        controllers = base / "cgroup.controllers"
        v2 = controllers.exists() and "memory" in controllers.read_text().split()
        if not (v1 or v2):
            continue
        shared = v2 and pids_group is not None and pids_group.parent == base
        group = pids_group if shared else base / f"agentqueue-sandbox-{uuid.uuid4().hex[:12]}"
        assert group is not None
        try:
            if not shared:
                group.mkdir()
            (group / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(f"{limit}\n")
        except OSError as exc:
            if not shared:
                with contextlib.suppress(OSError):
                    group.rmdir()
            log.warning(
                "sandbox runs WITHOUT a memory limit: cannot create a memory cgroup"
                " under %s (%s); make the memory controller writable by the worker",
                base,
                exc,
            )
            return None
        return None if shared else group
    log.warning(
        "sandbox runs WITHOUT a memory limit: no memory cgroup controller under %s;"
        " mount it writable for the worker",
        ", ".join(map(str, MEMORY_ROOTS)),
    )
    return None
