"""agentqueue: agent requests and tool calls as events on message queues.

Backends publish with a `Client`; workers serve the agents and tools of an `App`; every event
of one session goes to the same partition, and results come back over a reply queue.

The names here are what an application is written against. The wire types (`Envelope` and its
bodies) live in `agentqueue.protocol`, the brokers in `agentqueue.broker`.
"""

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
