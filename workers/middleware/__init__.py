"""Middleware that ships with agentqueue: tracing and metrics, an event log, envelope
signatures, busy sessions, sessions paused for an approval, the shared model budget."""

from agentqueue.workers.middleware.approvals import ApprovalPauses
from agentqueue.workers.middleware.busy import BusySessions
from agentqueue.workers.middleware.event_log import EventLog
from agentqueue.workers.middleware.model_budget import ModelBudget
from agentqueue.workers.middleware.signing import Signing
from agentqueue.workers.middleware.tracing import Tracing

__all__ = ["ApprovalPauses", "BusySessions", "EventLog", "ModelBudget", "Signing", "Tracing"]
