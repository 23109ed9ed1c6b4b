"""An app for the FC middleware test: one tool, and a middleware that logs, refuses, fails once."""

from __future__ import annotations

import os

from agentqueue import App
from agentqueue.protocol import ToolCall
from agentqueue.workers.errors import Refused
from agentqueue.workers.pipeline import Event, Middleware, Next


def _log(line: str) -> None:
    with open(os.environ["AGENTQUEUE_TEST_LOG"], "a") as f:
        f.write(f"{line}\n")


class TenantGate(Middleware):
    """Logs each event before and after, refuses a suspended tenant, fails once for 'flaky'."""

    def __init__(self) -> None:
        self.failed_once: set[str] = set()

    async def process(self, event: Event, call_next: Next) -> None:
        assert event.envelope is not None
        body = event.envelope.body
        tenant = body.arguments.get("tenant", "?") if isinstance(body, ToolCall) else "?"
        _log(f"before {tenant}")
        if tenant == "suspended":
            raise Refused(f"tenant {tenant!r} is suspended; ask billing to lift it")
        if tenant == "flaky" and event.envelope.id not in self.failed_once:
            self.failed_once.add(event.envelope.id)  # the instance outlives the invocation
            raise RuntimeError("the audit log is unreachable")
        await call_next(event)
        _log(f"after {tenant} {event.outcome}")


app = App("fc-middleware", middleware=[TenantGate()])


@app.tool("work", timeout=30)
def work(tenant: str) -> str:
    """Do the tenant's work (test helper)."""
    _log(f"ran {tenant}")
    return f"done for {tenant}"
