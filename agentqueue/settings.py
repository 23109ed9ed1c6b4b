"""The settings object (it lives with the workers, which read it too)."""

from agentqueue.workers.settings import SECRET_FIELDS, Settings

__all__ = ["SECRET_FIELDS", "Settings"]
