"""Middleware that ships with agentqueue: tracing, metrics, an event log, streams kept for
attach, turn summaries, envelope signatures, busy sessions, sessions paused for an approval,
the shared model budget."""

from agentqueue.workers.middleware.approvals import ApprovalPauses
from agentqueue.workers.middleware.busy import BusySessions
from agentqueue.workers.middleware.event_log import EventLog
from agentqueue.workers.middleware.metrics import Metrics
from agentqueue.workers.middleware.model_budget import ModelBudget
from agentqueue.workers.middleware.signing import Signing
from agentqueue.workers.middleware.streams import KeepStreams
from agentqueue.workers.middleware.tracing import Tracing
from agentqueue.workers.middleware.turns import TurnSummaries

__all__ = [
    "ApprovalPauses",
    "BusySessions",
    "EventLog",
    "KeepStreams",
    "Metrics",
    "ModelBudget",
    "Signing",
    "Tracing",
    "TurnSummaries",
]
