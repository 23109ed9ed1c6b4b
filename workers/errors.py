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


class Refused(WorkerError):
    """Raise from a middleware to refuse an event: it is dead-lettered with this reason unrun."""


class ModelConfigError(WorkerError, ValueError):
    """The configured chat model cannot be used (a named model without a key, a bad setting)."""


class ModelCallError(PermanentError):
    """A model call failed for good; the message names the provider and model, never the key.

    It is a `PermanentError`: the model layer has already retried what was worth retrying, so
    the pipeline dead-letters the event at once instead of running the turn again.
    """


class SigningRequired(WorkerError):
    """A consumer was told to run only signed envelopes but has no signing keys."""


class SandboxError(WorkerError):
    """A sandboxed tool failed: its own error, the wall-clock limit, or a sandbox that died."""


class UnknownSandboxType(WorkerError, ValueError):
    """An app asked for a sandbox type this project does not provide."""


class StreamNotKept(WorkerError, LookupError):
    """The events an attach asks for are not kept: an unknown request, or past its retention.

    `first_kept` is the oldest seq still kept when only the start of the stream is gone
    (None: nothing of the request is kept)."""

    def __init__(self, message: str, *, first_kept: int | None = None) -> None:
        super().__init__(message)
        self.first_kept = first_kept
