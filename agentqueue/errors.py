"""Every error agentqueue raises on purpose, in one place to import and catch.

AgentQueueError
├── ProtocolError          bytes that are not a valid envelope (names the field)
├── BrokerError            a broker operation failed
│   ├── BrokerConnectionError (QueueUnavailable: a nack, publish again), MessageTooLarge,
│   │   PartitionMismatch, QueueFull, QueueMissing, UnknownBroker
├── WorkerError            LeaseLost, PermanentError, Refused (a middleware refusing an event),
│                          UnknownHandler,
│                          StreamNotKept (attach: an unknown request, or past retention)
├── RequestError           a request did not end with a final answer
│   ├── RequestFailed      the worker gave up (the dead-letter reason is the message)
│   ├── RequestTimedOut    its deadline passed
│   ├── RequestCancelled   it was cancelled
│   └── RequestBusy        a newer turn of its session rejected, interrupted or superseded it
├── BatchInputError        a batch input or results file that cannot be used (names the line)
└── ConsoleRefused         the web console will not start as configured (says what to set)
"""

from __future__ import annotations

from agentqueue.broker.errors import (
    BrokerConnectionError,
    BrokerError,
    MessageTooLarge,
    PartitionMismatch,
    QueueFull,
    QueueMissing,
    QueueUnavailable,
    UnknownBroker,
)
from agentqueue.protocol.errors import AgentQueueError, ProtocolError
from agentqueue.workers.errors import (
    LeaseLost,
    PermanentError,
    Refused,
    StreamNotKept,
    UnknownHandler,
    WorkerError,
)


class RequestError(AgentQueueError):
    """A request ended without a final answer."""

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class RequestFailed(RequestError):
    """The worker gave up on the request; the message is the reason it was dead-lettered."""


class RequestTimedOut(RequestError, TimeoutError):
    """The request's deadline passed before it finished."""


class RequestCancelled(RequestError):
    """The request was cancelled."""


class RequestBusy(RequestError):
    """A newer turn of the session decided this one's fate (on_busy): `kind` says how —
    `rejected` (the session was busy), `interrupted` (stopped by a newer turn) or `superseded`
    (replaced by a newer turn before it started)."""

    def __init__(self, message: str, *, request_id: str, kind: str) -> None:
        super().__init__(message, request_id=request_id)
        self.kind = kind


class BatchInputError(AgentQueueError, ValueError):
    """A batch input line or results file that cannot be used; the message names file and line."""


class ConsoleRefused(AgentQueueError, ValueError):
    """The web console will not start as configured: the message says what to set."""


__all__ = [
    "AgentQueueError",
    "BatchInputError",
    "BrokerConnectionError",
    "BrokerError",
    "ConsoleRefused",
    "LeaseLost",
    "MessageTooLarge",
    "PartitionMismatch",
    "PermanentError",
    "ProtocolError",
    "QueueFull",
    "QueueMissing",
    "QueueUnavailable",
    "Refused",
    "RequestBusy",
    "RequestCancelled",
    "RequestError",
    "RequestFailed",
    "RequestTimedOut",
    "StreamNotKept",
    "UnknownBroker",
    "UnknownHandler",
    "WorkerError",
]
