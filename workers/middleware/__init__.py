"""Middleware that ships with agentqueue: tracing and metrics, an event log, envelope
signatures, busy sessions, streams kept for attach."""

from agentqueue.workers.middleware.busy import BusySessions
from agentqueue.workers.middleware.event_log import EventLog
from agentqueue.workers.middleware.signing import Signing
from agentqueue.workers.middleware.streams import KeepStreams
from agentqueue.workers.middleware.tracing import Tracing

__all__ = ["BusySessions", "EventLog", "KeepStreams", "Signing", "Tracing"]
