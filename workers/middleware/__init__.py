"""Middleware that ships with agentqueue: tracing and metrics, an event log, signatures."""

from agentqueue.workers.middleware.event_log import EventLog
from agentqueue.workers.middleware.signing import Signing
from agentqueue.workers.middleware.tracing import Tracing

__all__ = ["EventLog", "Signing", "Tracing"]
