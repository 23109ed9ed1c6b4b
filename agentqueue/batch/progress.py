"""A running batch's progress as a small note in the session store, for the console.

`agentqueue batch run` writes `BatchProgress` under `batches_kind(namespace)` every second and
once more when it ends (with the mean score, if scored); the console's batch table reads it.
"""

from __future__ import annotations

import logging
import time

import anyio
import msgspec

from agentqueue.batch.report import BatchCounts
from agentqueue.workers.session_store import SessionStore

log = logging.getLogger("agentqueue.batch")

INTERVAL = 1.0  # seconds between progress notes


class BatchProgress(msgspec.Struct):
    """What a batch reports about itself."""

    name: str
    total: int
    done: int
    failed: int
    in_flight: int
    rate: float  # results written per second by this run
    updated_at: float
    finished: bool = False
    score: float | None = None


def batches_kind(namespace: str) -> str:
    """The note kind under which a namespace's batch progress is kept."""
    return f"{namespace}:batches"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(BatchProgress).decode


def read_progress(value: bytes) -> BatchProgress | None:
    """A batch note, or None when it is not one."""
    try:
        return _decode(value)
    except msgspec.MsgspecError:
        return None


class ProgressNotes:
    """Writes one batch's counts to the store, every `INTERVAL` seconds while it runs."""

    def __init__(self, store: SessionStore, namespace: str, name: str) -> None:
        self.store, self.kind, self.name = store, batches_kind(namespace), name

    async def write(
        self, counts: BatchCounts, *, finished: bool = False, score: float | None = None
    ) -> None:
        """One note now; a store that fails is logged, never fatal to the batch."""
        note = BatchProgress(
            self.name,
            counts.total,
            counts.done,
            counts.failed,
            counts.in_flight,
            round(counts.rate, 2),
            time.time(),
            finished,
            score,
        )
        try:
            await self.store.put_note(self.kind, self.name, _encode(note))
        except Exception as exc:
            log.warning("batch progress not kept in the store: %s", exc)

    async def run(self, counts: BatchCounts) -> None:
        """Write a note every interval until cancelled."""
        while True:
            await self.write(counts)
            await anyio.sleep(INTERVAL)
