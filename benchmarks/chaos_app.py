"""The app of the chaos run: every handler run is logged, every turn's effect lands in the store.

A request's text is `/tool apply {"session": …, "seq": …, "request": <request id>}`. The offline
model turns it into one remote `apply` call, which runs on the tool worker. Two records come out:

- a line per handler run in the file named by `AGENTQUEUE_CHAOS_LOG` (`agent` when a turn
  starts, `tool` when the tool runs): `kind session seq event_id pid`, written with one O_APPEND
  write so lines of several processes never interleave. The same event id twice = a duplicate
  delivery (e.g. a worker killed before it committed);
- the request message itself, in the session's agent memory that the store commits with the
  handled id. The same seq twice in the committed memory = a duplicate effect.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

from agentqueue import App
from agentqueue.workers.agent_context import AgentContext

if TYPE_CHECKING:
    from agentscope.agent import Agent
    from agentscope.model import ChatModelBase

LOG_ENV = "AGENTQUEUE_CHAOS_LOG"
COMMAND = "/tool apply "
# Far beyond what a run's memory reaches: AgentScope must never summarise the memory away,
# or the committed sequence could no longer be read from it.
CONTEXT_SIZE = 10**9

app = App("chaos")


def request_text(session: str, seq: int, request_id: str) -> str:
    """The text of request `seq` of `session` (the chaos client sends it)."""
    return COMMAND + json.dumps({"session": session, "seq": seq, "request": request_id})


def parse_request_text(text: str) -> dict[str, Any] | None:
    """The arguments of a request text, or None for any other text."""
    if not text.startswith(COMMAND):
        return None
    try:
        args = json.loads(text[len(COMMAND) :])
    except json.JSONDecodeError:
        return None
    return args if isinstance(args, dict) else None


def record(kind: str, session: str, seq: int, event_id: str) -> None:
    """Append one `kind session seq event_id pid` line to the run's handler log."""
    line = f"{kind} {session} {seq} {event_id} {os.getpid()}\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.tool("apply", timeout=30)
async def apply(session: str, seq: int, request: str) -> str:
    """Apply one step of a session (the chaos run's tool).

    Args:
        session: The session the step belongs to.
        seq: The step's position in its session, from 0.
        request: The id of the agent request that asked for the step.
    """
    # The tool call's event id is `<request id>:1`: RemoteTools numbers a request's calls.
    record("tool", session, seq, f"{request}:1")
    return f"applied {seq}"


@app.agent("chaos")
def chaos(ctx: AgentContext) -> Agent:
    """An agent whose model logs the start of every turn it runs."""
    ctx.model_factory = _recording_model
    return ctx.build_agent("You apply the steps you are asked to.", tools=["apply"])


def _recording_model() -> ChatModelBase:
    return _recording_model_class()(context_size=CONTEXT_SIZE)


@functools.cache
def _recording_model_class() -> type[ChatModelBase]:
    # Built on first use: the tool worker never imports AgentScope.
    from agentqueue.workers.scripted_model import ScriptedChatModel

    class RecordingModel(ScriptedChatModel):
        """The scripted model, logging a turn when it is called on a fresh chaos request."""

        async def _call_api(
            self, model_name: str, messages: list[Any], *args: Any, **kwargs: Any
        ) -> Any:
            last = messages[-1] if messages else None
            if last is not None and last.role == "user":
                args_ = parse_request_text((last.get_text_content(separator=" ") or "").strip())
                if args_ is not None:
                    record("agent", args_["session"], args_["seq"], args_["request"])
            return await super()._call_api(model_name, messages, *args, **kwargs)

    return RecordingModel
