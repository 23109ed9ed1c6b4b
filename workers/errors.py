"""Errors of the worker runtime; all are `AgentQueueError`s."""

from __future__ import annotations

from agentqueue.protocol.errors import AgentQueueError


class WorkerError(AgentQueueError):
    """The worker runtime could not do what was asked."""


class LeaseLost(WorkerError):
    """This worker no longer holds the session's lease; its write was refused (fencing)."""


class PermanentError(WorkerError):
    """Raise from a handler to dead-letter the event at once instead of retrying it."""


class UnknownHandler(WorkerError, LookupError):
    """An event names an agent or tool that is not registered on this app."""


class SigningRequired(WorkerError):
    """A consumer was told to run only signed envelopes but has no signing keys."""
