"""The namespace's shared model budget around every agent turn.

A turn may call its model several times (a tool call, then the answer), so the budget is not
taken per event: this layer puts the turn in the budget's backend (the store's, shared by every
worker of the namespace), and each model call of the turn takes its own grant from it
(`workers/rate_limit.py`), waiting for room instead of failing.
"""

from __future__ import annotations

from agentqueue.protocol.messages import AgentRequest
from agentqueue.workers.models import ModelRuntime
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware
from agentqueue.workers.rate_limit import use_backend


class ModelBudget(Middleware):
    """Agent turns take their model calls' grants from the shared budget of `models`."""

    processes = frozenset({"agent_request"})  # process() passes other events straight on

    def __init__(self, models: ModelRuntime) -> None:
        self.models = models

    async def process(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        if envelope is None or not isinstance(envelope.body, AgentRequest):
            await call_next(event)
            return
        with use_backend(self.models.backend()):
            await call_next(event)
