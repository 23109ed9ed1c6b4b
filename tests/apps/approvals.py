"""An app for the approval tests: tools with effects a test can count, which need a person's yes."""

from __future__ import annotations

import os

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext

app = App("approvals")


def _record(line: str) -> None:
    # One O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(os.environ["AGENTQUEUE_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@app.tool("pay", timeout=30, requires_approval=True)
async def pay(to: str, amount: int) -> str:
    """Pay `amount` to `to` (test helper: every payment is a line in the test log)."""
    _record(f"pay {to} {amount}")
    return f"paid {amount} to {to}"


@app.tool("pay_soon", timeout=30, requires_approval=True, approval_timeout=1.0)
async def pay_soon(to: str, amount: int) -> str:
    """Pay, if someone says yes within a second (test helper)."""
    _record(f"pay_soon {to} {amount}")
    return f"paid {amount} to {to}"


@app.tool("transfer", timeout=30, requires_approval=lambda args: args.get("amount", 0) > 100)
async def transfer(to: str, amount: int) -> str:
    """Transfer `amount` to `to`; only large amounts need approval (test helper)."""
    _record(f"transfer {to} {amount}")
    return f"transferred {amount} to {to}"


@app.agent("assistant")
def assistant(ctx: AgentContext):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You pay people when asked.")
