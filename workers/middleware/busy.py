"""A new turn while its session is busy: `on_busy` decides, on the session's owner.

The worker that owns a session's partition receives every event of the session, in order, and
runs them one at a time in the session's lane, so at receipt it knows whether a turn is running
or waiting. What the new turn does (the request's `on_busy`, else its agent's default):

- `enqueue`: wait in the lane behind the others (the default);
- `reject`: answered `rejected` at once when a turn is running or waiting;
- `interrupt`: the running turn is interrupted (AgentScope ends it with consistent memory, which
  is saved) and answered `interrupted`; the new turn then runs after it;
- `rollback`: as `interrupt`, but the running turn's memory changes are not saved — the session
  is as it was before that turn (side effects of tools it called cannot be undone);
- `latest`: the turns waiting in the lane are answered `superseded` when their turn comes; the
  running one finishes; the newest runs.

On Function Compute a partition's trigger hands over one batch at a time and a batch's events
are all received before any runs, so a turn never runs while a newer one of its session arrives:
`reject` and `latest` hold among the events of one batch, and `interrupt` and `rollback` cannot
hold at all — they are refused there with a reason, never quietly treated as `enqueue`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentqueue.protocol.admission import refused_envelope
from agentqueue.protocol.messages import AgentRequest
from agentqueue.workers.app import App
from agentqueue.workers.errors import UnknownHandler
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.pipeline.pipeline import Pipeline

_SUPERSEDED = "superseded_by"


@dataclass
class _Session:
    running: Event | None = None
    waiting: list[Event] = field(default_factory=list)


class BusySessions(Middleware):
    """Applies each agent request's `on_busy` policy against its session's lane."""

    processes = frozenset({"agent_request"})  # process() passes other events straight on

    def __init__(self, app: App, *, interrupts: bool = True) -> None:
        self.app = app
        self.interrupts = interrupts  # False where a running turn never meets a newer one (FC)
        self._sessions: dict[str, _Session] = {}
        self._pipeline: Pipeline | None = None

    def bind(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def admit(self, event: Event, call_next: Next) -> None:
        await call_next(event)
        envelope = event.envelope
        if event.refusal is not None or event.decided or envelope is None:
            return
        if not isinstance(envelope.body, AgentRequest):
            return
        policy = self._policy(envelope.body)
        if policy in ("interrupt", "rollback") and not self.interrupts:
            reason = (
                f"on_busy={policy!r} cannot hold here: on Function Compute a turn never runs while"
                " a newer turn of its session arrives; use 'enqueue', 'reject' or 'latest'"
            )
            event.refuse(refused_envelope(envelope, reason, "$.body.on_busy"))
            return
        session = self._sessions.setdefault(event.key, _Session())
        busy = session.running is not None or bool(session.waiting)
        if busy and policy == "reject":
            await self._reject(event, session)
            return
        if busy and policy in ("interrupt", "rollback") and session.running is not None:
            assert session.running.envelope is not None and self._pipeline is not None
            discard = policy == "rollback"
            self._pipeline.interrupt(
                session.running.envelope.id, "interrupted", discard_state=discard
            )
        if policy == "latest":
            for waiting in session.waiting:
                waiting.extra[_SUPERSEDED] = envelope.id
        session.waiting.append(event)

    async def process(self, event: Event, call_next: Next) -> None:
        session = self._sessions.get(event.key)
        if session is None or event not in session.waiting:
            await call_next(event)  # not an agent turn (or received before this middleware)
            return
        session.waiting.remove(event)
        session.running = event
        try:
            newer = event.extra.get(_SUPERSEDED)
            if newer is None:
                await call_next(event)
                return
            assert self._pipeline is not None
            error = f"request superseded by {newer}, a newer turn of its session (on_busy='latest')"
            event.ack(self._pipeline.failure_reply(event, "superseded", error))
        finally:
            session.running = None
            self._forget_if_idle(event.key, session)

    def abandoned(self, event: Event) -> None:
        session = self._sessions.get(event.key)
        if session is not None and event in session.waiting:
            session.waiting.remove(event)
            self._forget_if_idle(event.key, session)

    def _policy(self, request: AgentRequest) -> str:
        return policy_of(self.app, request)

    async def _reject(self, event: Event, session: _Session) -> None:
        assert self._pipeline is not None and event.envelope is not None
        ahead = session.running or session.waiting[0]
        assert ahead.envelope is not None
        error = busy_error(event.envelope.session_id, ahead.envelope.id)
        await self._pipeline.publish_reply(
            event, self._pipeline.failure_reply(event, "rejected", error)
        )
        await event.settler.ack()
        event.ack()  # decided and settled here: it gets no lane

    def _forget_if_idle(self, key: str, session: _Session) -> None:
        if session.running is None and not session.waiting:
            self._sessions.pop(key, None)


def policy_of(app: App, request: AgentRequest) -> str:
    """The request's `on_busy`, else its agent's default."""
    if request.on_busy is not None:
        return request.on_busy
    try:
        return app.agent_spec(request.agent).on_busy
    except UnknownHandler:
        return "enqueue"  # refused when it runs, with the reason


def busy_error(session_id: str, ahead: str) -> str:
    """What a turn refused with on_busy='reject' is told."""
    return (
        f"session {session_id!r} is busy with request {ahead} (on_busy='reject'):"
        " send it again when that turn has finished"
    )
