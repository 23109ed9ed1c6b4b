"""Runs `AgentRequest` events: build the session's AgentScope agent, run one turn, keep its state.

AgentScope is imported on first use, not at module load, so a tool worker or an FC instance
that never runs an agent does not pay for the import. A worker that serves agents calls
`import_agentscope` on a thread before it takes events: the import takes seconds, and done by
the first event it would stall the event loop (heartbeats, lease renewals) meanwhile.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

import msgspec

from agentqueue.protocol.messages import AgentRequest, Envelope, Message, ResultEvent, TextContent
from agentqueue.workers.app import App
from agentqueue.workers.handling import Emit, HandlerResult, RunControl
from agentqueue.workers.models import ModelRuntime, default_runtime
from agentqueue.workers.usage import record_on_span

if TYPE_CHECKING:
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
    """One agent turn per event, with the session's memory loaded before and saved after."""

    uses_state = True

    def __init__(
        self,
        app: App,
        remote_tools: RemoteTools | None,
        *,
        tracing: bool = False,
        worker_name: str | None = None,
        models: ModelRuntime | None = None,
    ) -> None:
        self.app = app
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
        from agentqueue.workers.agent_context import AgentContext
        from agentqueue.workers.agent_turn import load_state, run_turn

        request = envelope.body
        assert isinstance(request, AgentRequest)
        spec = self.app.agent_spec(request.agent)
        failures: list[str] = []  # the request's failed tool calls, for its result's metadata
        invoke_remote = (
            self.remote_tools.for_request(envelope, failures) if self.remote_tools else None
        )
        ctx = AgentContext(
            agent_name=spec.name,
            session_id=envelope.session_id,
            user_id=request.user_id,
            state=load_state(state) if state else None,
            tools=self.app.tools,
            invoke_remote=invoke_remote,
            tracing=self.tracing,
            models=self.models,
        )
        agent = spec.factory(ctx)
        outcome = await run_turn(agent, msgspec.to_builtins(request.input), emit)
        interrupted = outcome.finished_reason == "interrupted"
        kind = (control.reason or "cancelled") if interrupted else "final"
        if outcome.finished_reason not in ("completed", "interrupted"):
            raise RuntimeError(
                f"agent {spec.name!r} ended its turn with {outcome.finished_reason!r}"
            )
        result = ResultEvent(
            request_id=envelope.id,
            kind=kind,  # type: ignore[arg-type]
            text=outcome.text,
            error=None if kind == "final" else f"request {kind.replace('_', ' ')}",
            output=[
                Message(
                    role="assistant",
                    content=[TextContent(text=outcome.text)],
                    metadata={"tool_errors": failures} if failures else None,
                )
            ],
            worker=self.worker_name,
            usage=outcome.usage,
        )
        record_on_span(outcome.usage)
        return HandlerResult(result, outcome.state_json)
