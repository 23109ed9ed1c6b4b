"""What a user's agent factory receives, and the one-liner that builds a worker-ready agent.

A factory looks like::

    def weather_agent(ctx: AgentContext) -> Agent:
        return ctx.build_agent("You answer weather questions.", tools=["get_weather"])

or spells the same out with `Agent(..., model=ctx.model(), toolkit=ctx.toolkit("get_weather"),
state=ctx.state, middlewares=ctx.middlewares())`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentqueue.workers.models import ModelRuntime, default_runtime
from agentqueue.workers.toolkit import InvokeRemote, ToolSpec, build_toolkit

if TYPE_CHECKING:
    from agentscope.agent import Agent
    from agentscope.middleware import MiddlewareBase
    from agentscope.model import ChatModelBase
    from agentscope.state import AgentState
    from agentscope.tool import Toolkit


@dataclass
class AgentContext:
    """The session, saved state, tools and settings an agent factory builds its agent from."""

    agent_name: str
    session_id: str
    user_id: str | None = None
    state: AgentState | None = None
    tools: dict[str, ToolSpec] = field(default_factory=dict)
    invoke_remote: InvokeRemote | None = None
    tracing: bool = False
    model_factory: Callable[[], ChatModelBase] | None = None
    """Overrides the configured model (e.g. a scripted model with a delay in tests)."""
    models: ModelRuntime | None = None
    """The worker's configured model and its limits; None: the environment's."""

    def model(self, name: str | None = None) -> ChatModelBase:
        """A new chat model: `model_factory()` if set, else the configured one (or the model
        `name` at the configured provider), its calls retried and rate limited."""
        if self.model_factory is not None:
            return self.model_factory()
        return (self.models or default_runtime()).model(name)

    def toolkit(self, *names: str) -> Toolkit:
        """A toolkit with the named tools, or with all tools when no name is given."""
        return build_toolkit(self._specs(names or None), self.invoke_remote)

    def middlewares(self) -> list[MiddlewareBase]:
        """AgentScope's TracingMiddleware when tracing is on, else nothing."""
        if not self.tracing:
            return []
        from agentscope.middleware import TracingMiddleware

        return [TracingMiddleware()]

    def agent_state(self) -> AgentState:
        """The restored state, or a fresh one carrying this session's id."""
        if self.state is not None:
            return self.state
        from agentscope.state import AgentState

        return AgentState(session_id=self.session_id)

    def build_agent(
        self,
        system_prompt: str,
        *,
        tools: Iterable[str] | None = None,
        model: str | None = None,
    ) -> Agent:
        """An agent named `agent_name` with this context's model (or the model `model` at the
        configured provider), tools, state and tracing."""
        from agentscope.agent import Agent, InjectionConfig, ReActConfig

        return Agent(
            # The name is part of the saved memory (it marks the agent's own
            # messages), so it must stay the same for the session's life.
            name=self.agent_name,
            system_prompt=system_prompt,
            model=self.model(model),
            toolkit=build_toolkit(self._specs(tools), self.invoke_remote),
            middlewares=self.middlewares(),
            state=self.agent_state(),
            # Runtime-state injection writes the wall-clock time into memory:
            # offline runs and their tests would no longer be deterministic.
            injection_config=InjectionConfig(inject_runtime_state=False),
            # run_turn relies on AgentScope ending an interrupted reply normally.
            react_config=ReActConfig(interruption_raise_cancelled_error=False),
        )

    def _specs(self, names: Iterable[str] | None) -> list[ToolSpec]:
        """The specs for the given names (all when None); unknown names are an error."""
        if names is None:
            return [spec for spec in self.tools.values() if spec.offered]
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.tools]
        if unknown:
            known = ", ".join(sorted(self.tools)) or "none"
            raise ValueError(
                f"agent {self.agent_name}: unknown tool(s) {', '.join(unknown)}; "
                f"known tools: {known}"
            )
        return [self.tools[n] for n in wanted]
