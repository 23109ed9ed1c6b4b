"""Runs `AgentRequest` events: build the session's AgentScope agent, run one turn, keep its state.

AgentScope is imported on first use, not at module load, so a tool worker or an FC instance
that never runs an agent does not pay for the import. A worker that serves agents calls
`import_agentscope` on a thread before it takes events: the import takes seconds, and done by
the first event it would stall the event loop (heartbeats, lease renewals) meanwhile.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from agentqueue.protocol.messages import AgentRequest, Approval, Cancel, Envelope, ResultEvent
from agentqueue.workers import approval_state, approval_turn
from agentqueue.workers.app import App
from agentqueue.workers.approval_state import Caller, Pause, PendingCall
from agentqueue.workers.handling import Emit, HandlerResult, RunControl
from agentqueue.workers.models import ModelRuntime, default_runtime
from agentqueue.workers.usage import record_on_span

if TYPE_CHECKING:
    from agentqueue.workers.agent_turn import TurnOutcome
    from agentqueue.workers.remote_tools import RemoteTools

log = logging.getLogger("agentqueue.worker")


# What a turn imports: the agent, the model base (the offline model too), tools and messages.
AGENTSCOPE_MODULES = (
    "agentscope.agent",
    "agentscope.model",
    "agentscope.tool",
    "agentscope.message",
    "agentscope.event",
    "agentscope.state",
    "agentqueue.workers.scripted_model",
)


def import_agentscope() -> None:
    """Import what an agent turn needs (blocking: call it on a thread)."""
    for module in AGENTSCOPE_MODULES:
        importlib.import_module(module)


class AgentHandler:
    """One agent turn per event, with the session's memory loaded before and saved after; an
    `Approval` resumes the session's paused turn (see `approval_turn`)."""

    uses_state = True

    def __init__(
        self,
        app: App,
        remote_tools: RemoteTools | None,
        *,
        tracing: bool = False,
        worker_name: str | None = None,
        models: ModelRuntime | None = None,
        approval_timeout: float = approval_turn.DEFAULT_APPROVAL_TIMEOUT,
    ) -> None:
        self.app = app
        self.approval_timeout = approval_timeout
        self.remote_tools = remote_tools
        self.tracing = tracing
        self.worker_name = worker_name
        # Resolved here, when the worker starts: a model that cannot be used (a named model
        # without its key) refuses the start instead of failing every request later.
        namespace = remote_tools.topology.namespace if remote_tools is not None else None
        self.models = models or default_runtime(namespace)
        log.info("agents use the %s", self.models.describe())

    def store_key(self, envelope: Envelope) -> str:
        return envelope.session_id

    def deduplicates(self, envelope: Envelope) -> bool:
        return True

    async def handle(
        self, envelope: Envelope, state: str | None, emit: Emit, control: RunControl
    ) -> HandlerResult:
        from agentqueue.workers.agent_turn import run_turn

        if isinstance(envelope.body, Approval):
            return await self._decide(envelope, state, emit, control)
        if isinstance(envelope.body, Cancel):
            return await self._cancel_paused(envelope, state, emit)
        request = envelope.body
        assert isinstance(request, AgentRequest)
        approvals = approval_state.read(state)
        if approvals.paused is not None:
            # The ApprovalPauses middleware makes such turns wait; meeting one here means the
            # pause was written while this turn was let in (a partition changing hands).
            raise RuntimeError(
                f"session {envelope.session_id!r} is paused on request"
                f" {approvals.paused.caller.request_id} waiting for approval; this turn runs"
                " once it is decided"
            )
        spec = self.app.agent_spec(request.agent)
        failures: list[str] = []  # the request's failed tool calls, for its result's metadata
        agent = self._agent(spec.name, envelope, request.user_id, state, failures)
        outcome = await run_turn(agent, msgspec.to_builtins(request.input), emit)
        result, pause = self._answer(
            envelope.id, Caller.of(envelope), spec.name, outcome, control, failures, None
        )
        approvals.paused = pause
        return HandlerResult(result, approval_state.write(outcome.state_json, approvals))

    async def _decide(
        self, envelope: Envelope, state: str | None, emit: Emit, control: RunControl
    ) -> HandlerResult:
        """Resume the session's paused turn with a decision on one of its calls."""
        from agentqueue.workers.agent_turn import resume_turn

        approvals = approval_state.read(state)
        chosen = approval_turn.choose(approvals, envelope)
        if isinstance(chosen, ResultEvent):
            return HandlerResult(chosen)  # decided before: its answer, from the store
        call, approved, reason = chosen
        pause = approvals.paused
        assert pause is not None
        if approval_state.expired(pause):
            reason = approval_turn.timeout_reason(pause.timeout or self.approval_timeout)
        spec = self.app.agent_spec(pause.agent)
        failures: list[str] = []
        agent = self._agent(spec.name, envelope, None, state, failures)
        note = None
        if not approved and reason:
            note = approval_turn.denial_note(agent, call.call_id, reason)
        confirm = approval_turn.confirmation(agent, call, approved)
        outcome = await resume_turn(agent, confirm, emit, note)
        still = [c for c in pause.calls if c.call_id != call.call_id]
        result, next_pause = self._answer(
            pause.caller.request_id, pause.caller, spec.name, outcome, control, failures, still
        )
        approval_turn.settle(approvals, pause, call, approved, reason, result, next_pause)
        log.info(
            "tool call %s of request %s %s%s",
            call.call_id,
            pause.caller.request_id,
            "approved" if approved else "denied",
            f" ({reason})" if reason else "",
        )
        return HandlerResult(result, approval_state.write(outcome.state_json, approvals))

    async def _cancel_paused(
        self, envelope: Envelope, state: str | None, emit: Emit
    ) -> HandlerResult:
        """End the session's paused turn `cancelled` (AgentScope closes its pending calls as
        interrupted); a cancel of anything else was acted on when it arrived."""
        from agentqueue.workers.agent_turn import resume_turn

        cancel = envelope.body
        assert isinstance(cancel, Cancel)
        approvals = approval_state.read(state)
        pause = approvals.paused
        error = "request cancelled"
        if pause is None or pause.caller.request_id != cancel.request_id:
            return HandlerResult(ResultEvent(cancel.request_id, "cancelled", error=error))
        from agentscope.event import UserInterruptEvent

        spec = self.app.agent_spec(pause.agent)
        agent = self._agent(spec.name, envelope, None, state, [])
        outcome = await resume_turn(agent, UserInterruptEvent(reply_id=agent.state.reply_id), emit)
        result = ResultEvent(
            request_id=cancel.request_id,
            kind="cancelled",
            text=outcome.text,
            error=error,
            worker=self.worker_name,
        )
        for call in pause.calls:
            approval_turn.settle(approvals, pause, call, False, "cancelled", result, None)
        log.info("paused request %s cancelled", cancel.request_id)
        return HandlerResult(result, approval_state.write(outcome.state_json, approvals))

    def _agent(
        self,
        agent_name: str,
        envelope: Envelope,
        user_id: str | None,
        state: str | None,
        failures: list[str],
    ) -> Any:
        from agentqueue.workers.agent_context import AgentContext
        from agentqueue.workers.agent_turn import load_state

        spec = self.app.agent_spec(agent_name)
        invoke_remote = (
            self.remote_tools.for_request(envelope, failures) if self.remote_tools else None
        )
        ctx = AgentContext(
            agent_name=spec.name,
            session_id=envelope.session_id,
            user_id=user_id,
            state=load_state(state) if state else None,
            tools=self.app.tools,
            invoke_remote=invoke_remote,
            tracing=self.tracing,
            models=self.models,
        )
        return spec.factory(ctx)

    def _timeout(self, tool: str) -> float:
        spec = self.app.tools.get(tool)
        own = spec.approval_timeout if spec is not None else None
        return own if own is not None else self.approval_timeout

    def _answer(
        self,
        request_id: str,
        caller: Caller,
        agent_name: str,
        outcome: TurnOutcome,
        control: RunControl,
        failures: list[str],
        still: list[PendingCall] | None,
    ) -> tuple[ResultEvent, Pause | None]:
        """The turn's answer, and the pause it leaves when it waits for approval."""
        reason = outcome.finished_reason
        if reason not in ("completed", "interrupted", "parked"):
            raise RuntimeError(f"agent {agent_name!r} ended its turn with {reason!r}")
        pause = None
        if reason == "parked":
            pause = approval_turn.pause_of(outcome, caller, agent_name, self._timeout, still)
            if pause is None:
                raise RuntimeError(
                    f"agent {agent_name!r} parked its turn waiting for an external tool result;"
                    " register its tools on the app (or with requires_approval) instead"
                )
        interrupted = reason == "interrupted"
        kind = (control.reason or "cancelled") if interrupted else "final"
        result = approval_turn.answer(
            request_id, outcome, kind, worker=self.worker_name, failures=failures, pause=pause
        )
        record_on_span(outcome.usage)
        return result, pause
