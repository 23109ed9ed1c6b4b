"""One request as the console shows it: its spans from the JSON-lines span files workers write
(`--trace-file`), and the answer the session store keeps for the event that was handled.

A request is found by its id on `publish`/`process` spans (`messaging.message.id`); its
replays (new envelopes, `replay_of` the dead one) share its conversation id, so they show
under the id the caller knows, with the replay's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from agentqueue.protocol.codec import decode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import ResultEvent
from agentqueue.telemetry.trace_file import read_spans
from agentqueue.workers.session_store import SessionStore


@dataclass(frozen=True)
class RequestView:
    """What the console knows about one request: its spans and its answer."""

    request_id: str
    session_id: str | None
    spans: list[dict[str, Any]]
    hops: list[dict[str, Any]]  # its publish/process spans, in time order
    answer: ResultEvent | None


async def find_request(
    request_id: str, span_files: Sequence[str], store: SessionStore | None
) -> RequestView | None:
    """The request's spans and answer, or None when no span file names it."""
    records = await anyio.to_thread.run_sync(_read, list(span_files))
    ids = {request_id}
    hops = [r for r in records if _about(r, ids)]
    if not hops:
        return None
    # Its replays carry its conversation id (the caller's correlation id) as theirs.
    ids |= {r["attributes"].get("messaging.message.conversation_id") for r in hops}
    hops = sorted((r for r in records if _about(r, ids)), key=lambda r: r["start"])
    trace_ids = {r["trace_id"] for r in hops}
    spans = [r for r in records if r["trace_id"] in trace_ids]
    session = next((r["attributes"]["agentqueue.session_id"] for r in hops if _session_of(r)), None)
    answer = None
    if session is not None and store is not None:
        handled = [
            r["attributes"]["messaging.message.id"]
            for r in hops
            if r["kind"] == "CONSUMER" and "messaging.message.id" in r["attributes"]
        ]
        for envelope_id in reversed(handled):  # the latest handling (a replay) first
            stored = await store.handled(session, envelope_id)
            answer = _answer(stored) if stored is not None else None
            if answer is not None:
                break
    return RequestView(request_id, session, spans, hops, answer)


def _read(span_files: list[str]) -> list[dict[str, Any]]:
    # A worker that has not exported a span yet has no file yet: nothing to read there.
    return read_spans(p for p in span_files if Path(p).is_file())


def _about(record: dict[str, Any], ids: set[str]) -> bool:
    attributes = record.get("attributes") or {}
    return (
        attributes.get("messaging.message.id") in ids
        or attributes.get("messaging.message.conversation_id") in ids
    ) and record.get("kind") in ("PRODUCER", "CONSUMER")


def _session_of(record: dict[str, Any]) -> bool:
    return bool((record.get("attributes") or {}).get("agentqueue.session_id"))


def _answer(stored: bytes) -> ResultEvent | None:
    try:
        body = decode(stored).body
    except ProtocolError:
        return None
    return body if isinstance(body, ResultEvent) else None
