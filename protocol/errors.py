"""The root of agentqueue's error hierarchy and the one error the wire format raises."""

from __future__ import annotations


class AgentQueueError(Exception):
    """Base class of every error agentqueue raises on purpose."""


class ProtocolError(AgentQueueError, ValueError):
    """Bytes that are not a valid v1 envelope; the message names the field and what was wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
