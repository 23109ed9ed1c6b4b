"""Runs `ToolCall` events on a tool worker: registered tools only, errors become tool results.

A tool's own timeout is the ceiling (a caller may only shorten it). Exceptions a tool declares
transient (`retry_on`) are raised to the pipeline, which retries the call with backoff;
`PermanentError` dead-letters it at once; any other exception is the call's failed result.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from typing import Any

import msgspec

from agentqueue.protocol.messages import Envelope, Image, ToolCall, ToolResult
from agentqueue.workers.app import App
from agentqueue.workers.errors import PermanentError
from agentqueue.workers.handling import Emit, HandlerResult, RunControl
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.tool_context import current_call, current_store
from agentqueue.workers.tool_runner import run_tool
from agentqueue.workers.toolkit import ToolOutput

log = logging.getLogger("agentqueue.worker")


class ToolHandler:
    """Runs a registered tool with its timeout; unknown names are refused (dead-lettered)."""

    uses_state = False

    def __init__(
        self, app: App, worker_name: str | None = None, store: SessionStore | None = None
    ) -> None:
        self.app = app
        self.worker_name = worker_name or f"pid-{os.getpid()}"
        self.store = store

    def store_key(self, envelope: Envelope) -> str:
        # Apart from the agent's record: the agent holds the session lease while it awaits us.
        return f"{envelope.session_id}#tools"

    def deduplicates(self, envelope: Envelope) -> bool:
        body = envelope.body
        assert isinstance(body, ToolCall)
        spec = self.app.tools.get(body.name)
        return spec is not None and not spec.idempotent

    async def handle(
        self, envelope: Envelope, state: str | None, emit: Emit, control: RunControl
    ) -> HandlerResult:
        call = envelope.body
        assert isinstance(call, ToolCall)
        spec = self.app.tools.get(call.name)
        if spec is None:
            known = ", ".join(sorted(self.app.tools)) or "none"
            raise PermanentError(
                f"tool {call.name!r} is not registered on this worker (registered: {known});"
                " refusing to run it"
            )
        call_id = call.call_id or envelope.id
        timeout = effective_timeout(call.name, call.timeout, spec.timeout)
        try:
            arguments = validate_arguments(spec.func, call.arguments)
        except (TypeError, msgspec.ValidationError) as exc:
            return HandlerResult(
                self._result(call, call_id, False, f"bad arguments for tool {call.name!r}: {exc}")
            )
        try:
            token = current_call.set((envelope.session_id, self.worker_name))
            store_token = current_store.set(self.store)
            try:
                output = await run_tool(spec.func, arguments, timeout)
            finally:
                current_store.reset(store_token)
                current_call.reset(token)
        except PermanentError:
            raise  # dead-lettered at once, as PermanentError promises
        except Exception as exc:
            if isinstance(exc, spec.retry_on):
                raise  # a transient error the tool declared: the pipeline retries with backoff
            if isinstance(exc, TimeoutError):
                text = f"tool {call.name} timed out after {timeout} s"
            else:
                text = f"tool {call.name} failed: {type(exc).__name__}: {exc}"
            # The failure is the caller's answer, and the operator's to see, with where it broke.
            log.warning(
                "%s (call %s, session %s)",
                text,
                call_id,
                envelope.session_id,
                exc_info=not isinstance(exc, TimeoutError),
            )
            return HandlerResult(self._result(call, call_id, False, text))
        if isinstance(output, ToolOutput):
            return HandlerResult(self._result(call, call_id, True, output.text, output.images))
        text = output if isinstance(output, str) else msgspec.json.encode(output).decode()
        return HandlerResult(self._result(call, call_id, True, text))

    def _result(
        self, call: ToolCall, call_id: str, ok: bool, output: str, images: list[Image] | None = None
    ) -> ToolResult:
        return ToolResult(
            call_id=call_id,
            name=call.name,
            ok=ok,
            output=output,
            worker=self.worker_name,
            images=images or [],
        )


def effective_timeout(name: str, requested: float | None, ceiling: float | None) -> float | None:
    """The seconds a call may run: the tool's own timeout, or a shorter one the caller asks for.

    Raises `PermanentError` for a requested timeout that is not a positive finite number.
    """
    if requested is None:
        return ceiling
    if not (math.isfinite(requested) and requested > 0):
        limit = "no limit" if ceiling is None else f"{ceiling} s"
        raise PermanentError(
            f"tool call timeout {requested!r} for tool {name!r} refused: give a finite number of"
            f" seconds above 0 (the tool's own limit, {limit}, is the most it gets), or none"
        )
    return requested if ceiling is None else min(requested, ceiling)


@functools.lru_cache(maxsize=1024)
def _signature(func: Any) -> tuple[inspect.Signature, dict[str, Any]]:
    return inspect.signature(func), inspect.get_annotations(func, eval_str=True)


def validate_arguments(func: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments checked and converted against the function's annotated signature."""
    signature, hints = _signature(func)  # read once per tool, not per call
    bound = signature.bind(**arguments)  # TypeError names a missing or unexpected argument
    checked: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        hint = hints.get(name)
        checked[name] = value if hint is None else msgspec.convert(value, hint)
    return checked
