"""Token usage of one agent turn, counted from AgentScope's model call events.

Counting the events (not a model wrapper) covers every model an agent calls, whoever built it.
The totals go on the turn's final `ResultEvent` and, as OpenTelemetry GenAI attributes, on the
span that is current while the handler runs (the worker's `process` span).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from agentqueue.protocol.messages import Usage


class UsageCounter:
    """Adds up `ModelCallStartEvent`/`ModelCallEndEvent`s of one reply."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.models: list[str] = []

    def add(self, event: Any) -> None:
        """Count one AgentScope event (others are ignored)."""
        from agentscope.event import ModelCallEndEvent, ModelCallStartEvent

        if isinstance(event, ModelCallStartEvent):
            if event.model_name not in self.models:
                self.models.append(event.model_name)
        elif isinstance(event, ModelCallEndEvent):
            self.calls += 1
            self.prompt_tokens += event.input_tokens
            self.completion_tokens += event.output_tokens

    def usage(self) -> Usage | None:
        """The totals, or None when no model was called."""
        if not self.calls and not self.models:
            return None
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            calls=self.calls,
            model=", ".join(self.models) or None,
        )


def record_on_span(usage: Usage | None) -> None:
    """Put the GenAI usage attributes on the current span (nothing when it does not record)."""
    span = trace.get_current_span()
    if usage is None or not span.is_recording():
        return
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "agentqueue.model.calls": usage.calls,
    }
    if usage.model:
        attributes["gen_ai.request.model"] = usage.model
    span.set_attributes(attributes)
