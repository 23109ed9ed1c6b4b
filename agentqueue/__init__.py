"""agentqueue: agent requests and tool calls as events on message queues.

Backends publish with a `Client`; workers serve the agents and tools of an `App`; every event
of one session goes to the same partition, and results come back over a reply queue.
"""

from agentqueue.client import Client, RequestHandle
from agentqueue.errors import (
    AgentQueueError,
    ProtocolError,
    RequestBusy,
    RequestCancelled,
    RequestError,
    RequestFailed,
    RequestTimedOut,
    StreamNotKept,
)
from agentqueue.protocol import AgentRequest, Envelope, Message, ResultEvent, ToolCall, ToolResult
from agentqueue.serve import run_worker
from agentqueue.settings import Settings
from agentqueue.workers.agent_context import AgentContext
from agentqueue.workers.app import App
from agentqueue.workers.schedules import Schedule, Schedules
from agentqueue.workers.worker import Worker

__all__ = [
    "AgentContext",
    "AgentQueueError",
    "AgentRequest",
    "App",
    "Client",
    "Envelope",
    "Message",
    "ProtocolError",
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
    "ToolCall",
    "ToolResult",
    "Worker",
    "run_worker",
]
