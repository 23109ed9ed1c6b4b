"""How a session's sandboxes end: `client.end_session`, or the store's session idle TTL.

Both close the session's sandbox (and browser) on the worker that holds it and delete its
workspace and its snapshot in the store. Idleness is read from the store (the time of the last
call by any worker), so a worker a session moved away from never ends it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import TYPE_CHECKING

from agentqueue.workers.sandbox import workspace_name
from agentqueue.workers.tool_context import current_call

if TYPE_CHECKING:
    from agentqueue.workers.sandbox_tools import Sandboxes

log = logging.getLogger("agentqueue.sandbox")


async def end_session(boxes: Sandboxes) -> str:
    """Close the calling session's sandboxes here; delete its workspaces and snapshot."""
    session_id, worker_name = current_call.get()
    closed = []
    for kind, managers in (("sandbox", boxes.managers), ("browser", boxes.browsers)):
        manager = managers.get(worker_name)
        box = manager.sessions.pop(session_id, None) if manager else None
        if box is not None:
            await box.close()
            closed.append(kind)
    name = workspace_name(session_id)
    for workspace in (boxes.config.root / name, boxes.config.root / ".browser" / name):
        await asyncio.to_thread(shutil.rmtree, workspace, ignore_errors=True)
    if boxes.config.snapshot_max:
        await boxes.sync.forget(boxes.artifact_store(), boxes.config.root / name)
    return (
        f"ended session {session_id!r} on {worker_name}: closed"
        f" {' and '.join(closed) or 'nothing (no sandbox was open)'}; its workspace and its"
        " snapshot are deleted"
    )


async def sweep(boxes: Sandboxes, worker_name: str) -> list[str]:
    """End the sessions whose workspaces are here and idle past the store's session TTL.

    Idle is read from the store (the last call by any worker), so a session that moved on
    is not ended by the worker it left. Returns the workspaces' names.
    """
    store = boxes.stores.get(worker_name)
    ttl = store.session_ttl if store is not None else None
    root = boxes.config.root
    if store is None or not ttl or not await asyncio.to_thread(root.is_dir):
        return []
    ended = []
    manager = boxes.managers.get(worker_name)
    for name in sorted(await asyncio.to_thread(os.listdir, root)):
        workspace = root / name
        if name.startswith(".") or workspace in boxes.in_flight:
            continue
        if not await boxes.sync.expired(store, workspace, ttl):
            continue
        if manager is not None:  # a worker with no sandbox open yet still sweeps the files
            for session_id, box in list(manager.sessions.items()):
                if box.workspace == workspace:
                    del manager.sessions[session_id]
                    await box.close()
        await asyncio.to_thread(shutil.rmtree, workspace, ignore_errors=True)
        await boxes.sync.forget(store, workspace)
        log.info("ended idle sandbox session %s (session TTL %s s)", name, ttl)
        ended.append(name)
    return ended


async def sweep_forever(boxes: Sandboxes, worker_name: str) -> None:
    """Sweep `worker_name`'s idle sessions every TTL/4 (at most 30 s) until cancelled."""
    while True:
        store = boxes.stores.get(worker_name)
        ttl = store.session_ttl if store is not None else None
        await asyncio.sleep(min(30.0, ttl / 4) if ttl else 1.0)
        try:
            await sweep(boxes, worker_name)
        except Exception:  # a store hiccup: the next round tries again
            log.exception("sweeping idle sandbox sessions failed; trying again")
