"""A paused turn, kept inside the session's saved state so it is written with it, atomically.

A turn that meets a tool needing approval ends with AgentScope's reply parked (the call marked
ASKING in the agent's memory). What the queue needs to resume it on any worker — who asked, where
to answer, until when, the later turns of the session that wait behind it, and the decisions
already made — rides in the same `AgentState` JSON, under `middle_context["agentqueue"]`, so one
fenced commit saves the agent's memory and the pause together, in every session store.

Read without importing AgentScope: the middleware that makes later turns wait looks at it on
every turn of a session.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agentqueue.protocol.messages import Envelope

KEY = "agentqueue"
DECIDED_KEPT = 100  # decisions remembered per session, to answer a repeated approve or deny


@dataclass
class PendingCall:
    """One tool call of the paused turn, waiting for a person."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Caller:
    """Where the paused request's answer goes: its id, reply queue, correlation and trace."""

    request_id: str
    reply_to: str | None = None
    correlation_id: str | None = None
    key: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None

    @classmethod
    def of(cls, envelope: Envelope) -> Caller:
        """The caller of `envelope`."""
        trace = envelope.trace
        return cls(
            request_id=envelope.id,
            reply_to=envelope.reply_to,
            correlation_id=envelope.correlation_id,
            key=envelope.key,
            traceparent=trace.traceparent if trace else None,
            tracestate=trace.tracestate if trace else None,
        )


@dataclass
class Pause:
    """The turn waiting for decisions: its caller, its calls, and when waiting ends."""

    caller: Caller
    calls: list[PendingCall]
    agent: str | None = None
    expires_at: float | None = None  # unix seconds; past it a decision counts as a denial
    timeout: float | None = None  # the seconds it was given

    def call(self, call_id: str | None) -> PendingCall | None:
        """The pending call `call_id`, or the only one when `call_id` is None."""
        if call_id is None:
            return self.calls[0] if len(self.calls) == 1 else None
        return next((c for c in self.calls if c.call_id == call_id), None)


@dataclass
class Decision:
    """A decision made, and the answer it produced (the encoded `ResultEvent` body)."""

    approved: bool
    reason: str | None
    answer: str
    caller: Caller


@dataclass
class Approvals:
    """Everything the queue keeps about approvals in one session's state."""

    paused: Pause | None = None
    waiting: list[str] = field(default_factory=list)  # encoded envelopes of later turns
    decided: dict[str, Decision] = field(default_factory=dict)  # "<request>:<call>" -> decision

    @property
    def holds_turns(self) -> bool:
        """Whether a new turn of the session must wait (a pause, or turns already waiting)."""
        return self.paused is not None or bool(self.waiting)

    def decision(self, request_id: str, call_id: str | None) -> Decision | None:
        """The decision made on `call_id` of `request_id` (any of its calls when None)."""
        if call_id is not None:
            return self.decided.get(f"{request_id}:{call_id}")
        found = [d for k, d in self.decided.items() if k.split(":", 1)[0] == request_id]
        return found[-1] if found else None

    def record(self, request_id: str, call_id: str, decision: Decision) -> None:
        """Remember a decision (the oldest are forgotten past `DECIDED_KEPT`)."""
        self.decided[f"{request_id}:{call_id}"] = decision
        while len(self.decided) > DECIDED_KEPT:
            self.decided.pop(next(iter(self.decided)))

    def waits(self, envelope_id: str) -> bool:
        """Whether the turn `envelope_id` is already among the waiting ones."""
        return any(_envelope_id(text) == envelope_id for text in self.waiting)


def _envelope_id(text: str) -> str | None:
    return json.loads(text).get("id")


def read(state: str | None) -> Approvals:
    """The approvals kept in a saved state (none for a new session)."""
    # Most sessions never pause: a substring test spares parsing their whole memory per turn
    # (text that merely contains the key is parsed, and found to hold none).
    if not state or f'"{KEY}":' not in state:
        return Approvals()
    raw = json.loads(state).get("middle_context", {}).get(KEY)
    if not raw:
        return Approvals()
    paused = raw.get("paused")
    return Approvals(
        paused=_pause(paused) if paused else None,
        waiting=list(raw.get("waiting", [])),
        decided={
            k: Decision(d["approved"], d.get("reason"), d["answer"], Caller(**d["caller"]))
            for k, d in raw.get("decided", {}).items()
        },
    )


def _pause(raw: dict[str, Any]) -> Pause:
    return Pause(
        caller=Caller(**raw["caller"]),
        calls=[PendingCall(**c) for c in raw["calls"]],
        agent=raw.get("agent"),
        expires_at=raw.get("expires_at"),
        timeout=raw.get("timeout"),
    )


def write(state: str, approvals: Approvals) -> str:
    """`state` with `approvals` in it (replacing what it held)."""
    data = json.loads(state)
    middle = data.setdefault("middle_context", {})
    if approvals.paused is None and not approvals.waiting and not approvals.decided:
        middle.pop(KEY, None)
    else:
        middle[KEY] = {
            "paused": asdict(approvals.paused) if approvals.paused else None,
            "waiting": approvals.waiting,
            "decided": {k: asdict(d) for k, d in approvals.decided.items()},
        }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def expired(pause: Pause, now: float | None = None) -> bool:
    """Whether the time to decide on `pause` has run out."""
    return pause.expires_at is not None and (now or time.time()) >= pause.expires_at
