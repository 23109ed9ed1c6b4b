"""Pausing a turn at a tool that needs approval, and resuming it on a decision.

Rides on AgentScope's own human-in-the-loop path: a tool whose permission is ASK is not run,
the agent yields `RequireUserConfirmEvent` and its reply ends parked with the call pending in
its memory. The turn's answer is then `approval_required`, and the pause is saved with the
agent's state (`approval_state`). A decision resumes the same reply with AgentScope's
`UserConfirmResultEvent`: approved, the call runs (once: the decision is saved with the state it
produced) and the agent goes on; denied, the agent gets a denied tool result naming the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from agentqueue.protocol.messages import (
    Approval,
    ApprovalRequest,
    Envelope,
    Message,
    ResultEvent,
    TextContent,
)
from agentqueue.workers import approval_state
from agentqueue.workers.approval_state import Approvals, Caller, Decision, Pause, PendingCall
from agentqueue.workers.errors import PermanentError

if TYPE_CHECKING:
    from agentscope.agent import Agent

    from agentqueue.workers.agent_turn import TurnOutcome

DEFAULT_APPROVAL_TIMEOUT = 3600.0  # seconds a paused turn waits before it counts as denied


def timeout_reason(timeout: float) -> str:
    """The denial an approval that never came turns into."""
    return f"no decision within {timeout:g} s (the approval timed out)"


def answer(
    request_id: str,
    outcome: TurnOutcome,
    kind: str,
    *,
    worker: str | None,
    failures: list[str],
    pause: Pause | None,
) -> ResultEvent:
    """The turn's answer: `approval_required` naming the first waiting call, or its end."""
    approval = None
    if pause is not None:
        first = pause.calls[0]
        kind = "approval_required"
        approval = ApprovalRequest(
            call_id=first.call_id,
            tool=first.tool,
            arguments=first.arguments,
            expires_at=pause.expires_at,
        )
    text = "" if pause is not None else outcome.text
    ok = kind in ("final", "approval_required")
    return ResultEvent(
        request_id=request_id,
        kind=kind,
        text=text,
        error=None if ok else f"request {kind.replace('_', ' ')}",
        output=None
        if pause is not None
        else [
            Message(
                role="assistant",
                content=[TextContent(text=outcome.text)],
                metadata={"tool_errors": failures} if failures else None,
            )
        ],
        worker=worker,
        usage=outcome.usage,
        approval=approval,
    )


def pause_of(
    outcome: TurnOutcome,
    caller: Caller,
    agent: str | None,
    timeouts: Callable[[str], float],
    still: list[PendingCall] | None = None,
) -> Pause | None:
    """The pause a parked outcome leaves (None when the turn ended), keeping calls still
    undecided from before (AgentScope does not ask for those again). `timeouts(tool)`: the
    seconds a call of that tool waits; the pause waits as long as its most patient call."""
    calls = list(still or [])
    for block in outcome.asking:
        calls.append(PendingCall(block.id, block.name, _arguments(block.input)))
    if not calls:
        return None
    timeout = max(timeouts(c.tool) for c in calls)
    return Pause(
        caller=caller,
        calls=calls,
        agent=agent,
        expires_at=time.time() + timeout,
        timeout=timeout,
    )


def _arguments(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_value": value}


def choose(
    approvals: Approvals, envelope: Envelope
) -> tuple[PendingCall, bool, str | None] | ResultEvent:
    """The call a decision is about and the decision itself (a late one is a denial), or the
    stored answer to a decision already made. Raises `PermanentError` when nothing waits."""
    decision = envelope.body
    assert isinstance(decision, Approval)
    pause = approvals.paused
    call = None
    if pause is not None and pause.caller.request_id == decision.request_id:
        call = pause.call(decision.call_id)
        if call is None and decision.call_id is None and len(pause.calls) > 1:
            waiting = ", ".join(c.call_id for c in pause.calls)
            raise PermanentError(
                f"request {decision.request_id} waits on {len(pause.calls)} tool calls"
                f" ({waiting}): name the one decided (call_id)"
            )
    if call is None:
        made = approvals.decision(decision.request_id, decision.call_id)
        if made is not None:
            return msgspec.json.decode(made.answer, type=ResultEvent)
        which = f"tool call {decision.call_id}" if decision.call_id else "tool call"
        raise PermanentError(
            f"request {decision.request_id} of session {envelope.session_id!r} has no {which}"
            " waiting for approval: check the request id (and call id) the approval_required"
            " event named"
        )
    assert pause is not None
    if approval_state.expired(pause):
        return call, False, None  # too late: the timeout's denial, whatever was asked
    return call, decision.approved, decision.reason


def confirmation(agent: Agent, call: PendingCall, approved: bool) -> Any:
    """AgentScope's `UserConfirmResultEvent` for one call the agent is waiting on."""
    from agentscope.event import ConfirmResult, UserConfirmResultEvent

    blocks = {b.id: b for b in agent.state.get_awaiting_tool_calls(agent.name)}
    block = blocks.get(call.call_id)
    if block is None:
        raise PermanentError(
            f"the agent's memory has no tool call {call.call_id} waiting for approval"
            " (the session's state was changed outside the queue)"
        )
    return UserConfirmResultEvent(
        reply_id=agent.state.reply_id,
        confirm_results=[ConfirmResult(confirmed=approved, tool_call=block)],
    )


def denial_note(agent: Agent, call_id: str, reason: str) -> Any:
    """An `on_item` hook that adds the denial's reason to AgentScope's denied tool result,
    before the agent's next model call reads it."""
    from agentscope.event import ToolResultEndEvent
    from agentscope.message import ToolResultBlock

    def note(item: Any) -> None:
        if not (isinstance(item, ToolResultEndEvent) and item.tool_call_id == call_id):
            return
        for block in reversed(agent.state.context[-1].content if agent.state.context else []):
            if isinstance(block, ToolResultBlock) and block.id == call_id:
                if isinstance(block.output, str):
                    block.output = f"{block.output} Reason: {reason}"
                return

    return note


def settle(
    approvals: Approvals,
    pause: Pause,
    call: PendingCall,
    approved: bool,
    reason: str | None,
    result: ResultEvent,
    next_pause: Pause | None,
) -> None:
    """Record the decision and its answer; the pause goes, or becomes the next one."""
    approvals.record(
        pause.caller.request_id,
        call.call_id,
        Decision(approved, reason, msgspec.json.encode(result).decode(), pause.caller),
    )
    approvals.paused = next_pause
