"""agentqueue: agent requests and tool calls as events on message queues.

Backends publish with a `Client`; workers serve the agents and tools of an `App`; every event
of one session goes to the same partition, and results come back over a reply queue.

The names here are what an application is written against. The wire types (`Envelope` and its
bodies) live in `agentqueue.protocol`, the brokers in `agentqueue.broker`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. They are imported on first use (PEP 562), not here: a Function
# Compute instance imports `agentqueue.workers.fc`, which runs this file first, and a cold
# start must not pay for the client, its tracing and the local worker it never uses.
_EXPORTS = {
    "Topology": "agentqueue.broker.topology",
    "Client": "agentqueue.client",
    "RequestHandle": "agentqueue.client",
    "AgentQueueError": "agentqueue.errors",
    "PermanentError": "agentqueue.errors",
    "ProtocolError": "agentqueue.errors",
    "QueueFull": "agentqueue.errors",
    "Refused": "agentqueue.errors",
    "RequestBusy": "agentqueue.errors",
    "RequestCancelled": "agentqueue.errors",
    "RequestError": "agentqueue.errors",
    "RequestFailed": "agentqueue.errors",
    "RequestTimedOut": "agentqueue.errors",
    "StreamNotKept": "agentqueue.errors",
    "ResultEvent": "agentqueue.protocol",
    "run_worker": "agentqueue.serve",
    "Settings": "agentqueue.settings",
    "AgentContext": "agentqueue.workers.agent_context",
    "App": "agentqueue.workers.app",
    "Event": "agentqueue.workers.pipeline",
    "Middleware": "agentqueue.workers.pipeline",
    "Next": "agentqueue.workers.pipeline",
    "Schedule": "agentqueue.workers.schedules",
    "Schedules": "agentqueue.workers.schedules",
    "Worker": "agentqueue.workers.worker",
}

if TYPE_CHECKING:
    from agentqueue.broker.topology import Topology
    from agentqueue.client import Client, RequestHandle
    from agentqueue.errors import (
        AgentQueueError,
        PermanentError,
        ProtocolError,
        QueueFull,
        Refused,
        RequestBusy,
        RequestCancelled,
        RequestError,
        RequestFailed,
        RequestTimedOut,
        StreamNotKept,
    )
    from agentqueue.protocol import ResultEvent
    from agentqueue.serve import run_worker
    from agentqueue.settings import Settings
    from agentqueue.workers.agent_context import AgentContext
    from agentqueue.workers.app import App
    from agentqueue.workers.pipeline import Event, Middleware, Next
    from agentqueue.workers.schedules import Schedule, Schedules
    from agentqueue.workers.worker import Worker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentqueue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AgentContext",
    "AgentQueueError",
    "App",
    "Client",
    "Event",
    "Middleware",
    "Next",
    "PermanentError",
    "ProtocolError",
    "QueueFull",
    "Refused",
    "RequestBusy",
    "RequestCancelled",
    "RequestError",
    "RequestFailed",
    "RequestHandle",
    "RequestTimedOut",
    "ResultEvent",
    "Schedule",
    "Schedules",
    "Settings",
    "StreamNotKept",
    "Topology",
    "Worker",
    "run_worker",
]
