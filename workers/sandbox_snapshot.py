"""A session's workspace as a snapshot in the store, so its files follow it to another machine.

After a call that changed the workspace (its fingerprint of paths, sizes and mtimes moved), the
worker packs it (tar.gz, symlinks kept as links, never followed) and puts it in the session
store under `sandbox-workspace/<session>`. A worker that gets the session and has no workspace
for it (its own root, another machine) unpacks the snapshot before the first call. Workspaces
larger than `snapshot_max` bytes are not snapshot: the call's answer and the worker's log say
so, and such sessions need a workspace root shared by the workers (a shared volume).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentqueue.workers.session_store import SessionStore

log = logging.getLogger(__name__)

PREFIX = "sandbox-workspace/"
# The control tool `client.end_session` calls on the session's tool partition.
END_SESSION_TOOL = "end_session"


def snapshot_key(name: str) -> str:
    """The store key of the snapshot of the workspace called `name`."""
    return PREFIX + name


def fingerprint(workspace: Path, limit: int) -> tuple[str, int]:
    """A digest of every entry (path, type, content or link target) and the bytes the files use.

    Contents, not mtimes: a restored workspace has the digest of the one that was packed. Past
    `limit` bytes nothing more is hashed (such a workspace is not snapshot anyway).
    """
    digest, total = hashlib.sha256(), 0
    for base, dirs, files in os.walk(workspace):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(base, name)
            st = os.lstat(full)
            relative = os.path.relpath(full, workspace)
            digest.update(f"{relative}\0{stat.S_IFMT(st.st_mode)}\0".encode(errors="replace"))
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(full).encode(errors="replace"))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total <= limit:
                    with open(full, "rb") as f:
                        digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest(), total


def pack(workspace: Path) -> bytes:
    """The workspace as tar.gz bytes (paths relative to it; symlinks as links)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for entry in sorted(os.listdir(workspace)):
            tar.add(workspace / entry, arcname=entry, recursive=True)
    return buffer.getvalue()


def unpack(data: bytes, workspace: Path) -> None:
    """Replace `workspace`'s contents by a snapshot; the `data` filter refuses escaping members."""
    workspace.mkdir(parents=True, exist_ok=True)
    for entry in os.listdir(workspace):  # the directory itself stays: a sandbox may bind it
        full = workspace / entry
        if full.is_dir() and not full.is_symlink():
            shutil.rmtree(full)
        else:
            full.unlink()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(workspace, filter="data")


def too_large(used: int, limit: int) -> str:
    """What the agent and the log are told when a workspace is over the snapshot limit."""
    return (
        f"[the workspace holds {used} bytes, over the {limit}-byte snapshot limit: this change"
        " was NOT saved to the store and will not follow the session to another worker (the"
        " last snapshot that fit will); keep large files out of the workspace, or give the"
        " workers a shared workspace root (a shared volume) and snapshot_max=0]"
    )


RESTORED = (
    "[this session's workspace was restored from its snapshot on this worker (the session moved"
    " here): files are back, Python variables and running processes from before are gone]\n"
)


NOTE = "sandbox-workspace"  # the store note holding the digest of a workspace's last snapshot
USED = "sandbox-used"  # the store note holding when a session's sandbox was last called


class WorkspaceSync:
    """One worker's view of its workspaces' snapshots: saved after changes, restored on arrival."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.last: dict[Path, str] = {}  # the digest each workspace had when last looked at
        self.unsaved: dict[Path, str] = {}  # over the limit: newer here than in the store
        self.locks: dict[Path, asyncio.Lock] = {}
        self.touched: dict[Path, float] = {}  # when this worker last wrote the USED note

    async def touch(self, store: SessionStore, workspace: Path, ttl: float) -> None:
        """Note in the store that the session was used now (for the session idle TTL).

        Written at most every ttl/4 seconds (and once a minute at most), so a busy session
        costs few store writes; the TTL is seen by every worker through the store.
        """
        now = time.time()
        if now - self.touched.get(workspace, 0.0) >= min(60.0, ttl / 4):
            await store.put_note(USED, workspace.name, repr(now).encode())
            self.touched[workspace] = now

    async def expired(self, store: SessionStore, workspace: Path, ttl: float) -> bool:
        """Whether the session of `workspace` was last used (by any worker) over `ttl` ago."""
        used = await store.note(USED, workspace.name)
        if not used:
            return False
        return time.time() - float(used) > ttl

    async def restore(self, store: SessionStore, workspace: Path) -> bool:
        """Unpack the store's snapshot into `workspace` unless the local copy is as new."""
        async with self.locks.setdefault(workspace, asyncio.Lock()):
            stored = await store.note(NOTE, workspace.name)
            if not stored:
                return False  # never snapshot, or the session ended
            if await asyncio.to_thread(workspace.exists):
                local, _ = await asyncio.to_thread(fingerprint, workspace, self.limit)
                if local in (stored.decode(), self.unsaved.get(workspace)):
                    self.last[workspace] = local
                    return False
            data = await store.get_artifact(snapshot_key(workspace.name))
            if not data:
                log.warning(
                    "the snapshot of workspace %s is gone from the store (past the store's"
                    " retention?): the session starts with the files this worker has",
                    workspace.name,
                )
                return False
            await asyncio.to_thread(unpack, data, workspace)
            self.last[workspace] = stored.decode()
            self.unsaved.pop(workspace, None)
            return True

    async def save(self, store: SessionStore, workspace: Path) -> str:
        """Snapshot `workspace` if it changed; the warning for the agent when it is too large."""
        async with self.locks.setdefault(workspace, asyncio.Lock()):
            if not await asyncio.to_thread(workspace.exists):
                return ""
            digest, used = await asyncio.to_thread(fingerprint, workspace, self.limit)
            if digest == self.last.get(workspace):
                return ""
            self.last[workspace] = digest
            if used > self.limit:
                self.unsaved[workspace] = digest
                message = too_large(used, self.limit)
                log.warning("workspace %s: %s", workspace.name, message)
                return message
            data = await asyncio.to_thread(pack, workspace)
            await store.put_artifact(snapshot_key(workspace.name), data)
            await store.put_note(NOTE, workspace.name, digest.encode())  # after the data it names
            self.unsaved.pop(workspace, None)
            return ""

    async def forget(self, store: SessionStore, workspace: Path) -> None:
        """Drop the snapshot of `workspace` (the session ended): overwritten empty in the store."""
        async with self.locks.setdefault(workspace, asyncio.Lock()):
            await store.put_note(NOTE, workspace.name, b"")
            await store.put_artifact(snapshot_key(workspace.name), b"")
            await store.put_note(USED, workspace.name, b"")
            self.touched.pop(workspace, None)
            self.last.pop(workspace, None)
            self.unsaved.pop(workspace, None)
        self.locks.pop(workspace, None)
