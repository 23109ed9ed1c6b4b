"""Middleware that ships with agentqueue: tracing and metrics, envelope signatures."""

from agentqueue.workers.middleware.signing import Signing
from agentqueue.workers.middleware.tracing import Tracing

__all__ = ["Signing", "Tracing"]
