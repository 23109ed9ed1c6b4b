"""A bounded summary of each session's last turns, kept in the session store for operators.

After every agent turn the worker writes the session's note (`turns_kind(namespace)`): its
last `TURNS_KEPT` turns with outcome and milliseconds, and the worker that ran the last one.
The console's sessions table reads these notes; nothing in the pipeline does.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from agentqueue.workers.middleware.metrics import outcome
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline

log = logging.getLogger("agentqueue.worker")

TURNS_KEPT = 10


class Turn(msgspec.Struct):
    """One handled agent request, summarized."""

    id: str
    outcome: str
    ms: float
    at: float
    worker: str


class SessionTurns(msgspec.Struct):
    """A session's note: its last turns, newest last."""

    session_id: str
    turns: list[Turn] = []


def turns_kind(namespace: str) -> str:
    """The note kind under which a namespace's session summaries are kept."""
    return f"{namespace}:turns"


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SessionTurns).decode


class TurnSummaries(Middleware):
    """Writes each session's last turns to the store after its turn is settled."""

    processes = frozenset({"agent_request"})  # process() passes other events straight on

    wraps_settlement = True  # the outcome is known; it never refuses

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    def bind(self, pipeline: Pipeline) -> None:
        self.store = pipeline.store
        self.kind = turns_kind(pipeline.topology.namespace)

    async def process(self, event: Event, call_next: Next) -> None:
        started = time.perf_counter()
        await call_next(event)
        envelope = event.envelope
        if envelope is None or envelope.type != "agent_request" or event.outcome == "hand_back":
            return  # tool calls are not turns; a handed-back event runs again elsewhere
        turn = Turn(
            envelope.id,
            outcome(event),
            round((time.perf_counter() - started) * 1000, 1),
            time.time(),
            self.worker_id,
        )
        try:
            stored = await self.store.note(self.kind, envelope.session_id)
            note = _decode(stored) if stored else SessionTurns(envelope.session_id)
            note.turns = [*note.turns, turn][-TURNS_KEPT:]
            await self.store.put_note(self.kind, envelope.session_id, _encode(note))
        except Exception as exc:  # a summary for operators never fails the turn it describes
            log.warning("turn summary of session %s not kept: %s", envelope.session_id, exc)


def read_turns(value: bytes) -> SessionTurns | None:
    """A session note as written by `TurnSummaries`, or None when it is not one."""
    try:
        return _decode(value)
    except msgspec.MsgspecError:
        return None
