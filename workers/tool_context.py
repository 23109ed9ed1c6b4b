"""What a running tool call may ask about itself, set by the tool handler around each call."""

from __future__ import annotations

import contextvars

from agentqueue.workers.session_store import SessionStore

current_call: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("current_call")
"""(session id, worker name) of the tool call running now: sandboxed tools find their sandbox."""

current_store: contextvars.ContextVar[SessionStore | None] = contextvars.ContextVar(
    "current_store", default=None
)
"""The session store of the worker running the tool call: where large tool outputs are kept."""
