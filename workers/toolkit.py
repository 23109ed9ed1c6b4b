"""Turn the worker's tool specs into an AgentScope Toolkit.

A local tool runs in this process; a remote tool is a proxy with the real
function's signature and docstring, so the model sees the same JSON schema,
whose body hands the call to the worker (which publishes a ToolCall event and
awaits the ToolResult). Either way a failure or a timeout comes back to the
agent as an error tool result, never as an exception out of the reply.
"""

from __future__ import annotations

import base64
import functools
import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentqueue.protocol.messages import Image
from agentqueue.workers.tool_runner import run_tool

if TYPE_CHECKING:
    from agentscope.tool import FunctionTool, ToolBase, ToolChunk, Toolkit

InvokeRemote = Callable[[str, dict[str, Any], float | None], Awaitable["str | ToolOutput"]]
"""`await invoke_remote(name, arguments, timeout)` runs a tool elsewhere and returns its output."""
NeedsApproval = Callable[[dict[str, Any]], bool]
"""`needs(arguments) -> bool`: whether one call of a tool waits for a person's yes."""

log = logging.getLogger("agentqueue.worker")

# Providers reject other tool names (OpenAI and DashScope enforce this pattern).
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolError(Exception):
    """A tool failure whose message is the whole error text the model sees (no prefix added).

    `invoke_remote` raises it (or a subclass) with the tool worker's error text,
    which already names the tool, e.g. "tool get_weather timed out after 2.0 s".
    """


@dataclass(frozen=True)
class ToolOutput:
    """What a tool returns when it has images beside its text (a screenshot, say)."""

    text: str
    images: list[Image] = field(default_factory=list)


def to_chunk(output: ToolOutput) -> ToolChunk:
    """The AgentScope tool result the model sees: the text, then each inline image as a block.

    An image that travelled by reference is named in a text block instead (its bytes are in
    the artifact store, where `Client.fetch_artifact` reads them).
    """
    from agentscope.message import Base64Source, DataBlock, TextBlock, ToolResultState
    from agentscope.tool import ToolChunk

    blocks: list[TextBlock | DataBlock] = [TextBlock(text=output.text)] if output.text else []
    for image in output.images:
        if image.data is not None:
            data = base64.b64encode(image.data).decode()
            blocks.append(DataBlock(source=Base64Source(data=data, media_type=image.media_type)))
        else:
            blocks.append(
                TextBlock(
                    text=f"[{image.media_type} {image.width}x{image.height}, {image.size} bytes,"
                    f" stored as artifact {image.ref}]"
                )
            )
    return ToolChunk(content=blocks, state=ToolResultState.SUCCESS)


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to agents: run here (`remote=False`) or by a tool worker."""

    name: str
    func: Callable[..., Any]
    description: str | None = None
    """What the model is told the tool does; None or "" takes it from the docstring."""
    remote: bool = False
    timeout: float | None = None
    """Seconds; a local tool is stopped after it, a remote one gets it passed to invoke_remote."""
    idempotent: bool = False
    """A pure tool: a repeated call may simply run again, so no result is stored for it."""
    retry_on: tuple[type[BaseException], ...] = ()
    """Exceptions that are transient: a call failing with one is retried with backoff (up to
    the worker's max_attempts) instead of answering the error at once. Remote tools only."""
    requires_approval: bool | NeedsApproval = False
    """True, or a predicate on the call's arguments: the turn pauses before the call runs
    until a person approves or denies it (AgentScope's ASK permission)."""
    approval_timeout: float | None = None
    """Seconds a call waits for a decision before it counts as denied; None: the worker's
    setting (AGENTQUEUE_APPROVAL_TIMEOUT)."""
    offered: bool = True
    """False: a control tool (e.g. ending a session's sandbox) that callers run through
    `client.call_tool`; it is never offered to an agent's model."""

    def __post_init__(self) -> None:
        """Reject names providers refuse, timeouts that are not positive and finite, and
        `retry_on` that is not a tuple of exception types of a remote tool."""
        if not _TOOL_NAME.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} is invalid: use 1-64 letters, digits, '_' or '-'"
            )
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(
                f"tool {self.name} timeout must be a finite number of seconds > 0, or None,"
                f" got {self.timeout!r}"
            )
        if not isinstance(self.retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, Exception) for t in self.retry_on
        ):
            raise ValueError(
                f"tool {self.name} retry_on must be a tuple of exception classes,"
                f" got {self.retry_on!r}"
            )
        if not (isinstance(self.requires_approval, bool) or callable(self.requires_approval)):
            raise ValueError(
                f"tool {self.name} requires_approval must be True, False or a function of the"
                f" call's arguments returning a bool, got {self.requires_approval!r}"
            )
        timeout = self.approval_timeout
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"tool {self.name} approval_timeout must be a finite number of seconds > 0, or"
                f" None (the worker's setting), got {timeout!r}"
            )
        if self.retry_on and not self.remote:
            raise ValueError(
                f"tool {self.name} has retry_on but runs in the agent's process (remote=False):"
                " retries are made by tool workers; make it remote=True or drop retry_on"
            )


def build_toolkit(specs: Iterable[ToolSpec], invoke_remote: InvokeRemote | None = None) -> Toolkit:
    """An AgentScope Toolkit with one allowed FunctionTool per spec."""
    # Imported here so defining ToolSpecs does not pay AgentScope's import time.
    from agentscope.tool import Toolkit

    tools: list[ToolBase] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"tool {spec.name} is listed twice: give each tool one spec")
        seen.add(spec.name)
        if spec.remote and invoke_remote is None:
            raise ValueError(
                f"tool {spec.name} is remote but no invoke_remote callback was given: "
                "pass one, or mark the spec remote=False"
            )
        tools.append(_function_tool(spec, invoke_remote))
    return Toolkit(tools=tools)


@functools.lru_cache(maxsize=1024)
def _schema(spec: ToolSpec) -> tuple[str, str, dict[str, Any]]:
    """Name, description and JSON schema as AgentScope reads them from the real function.

    Reading them builds pydantic models (milliseconds); an agent is built per event, so the
    schema is read once per tool and reused.
    """
    from agentscope.tool import FunctionTool

    reference = FunctionTool(spec.func, name=spec.name, description=spec.description)
    return reference.name, reference.description, reference.input_schema


def _function_tool(spec: ToolSpec, invoke_remote: InvokeRemote | None) -> FunctionTool:
    """Wrap one spec: same name, description and schema as the real function."""
    from agentscope.permission import PermissionBehavior, PermissionDecision
    from agentscope.tool import FunctionTool

    name, description, input_schema = _schema(spec)

    async def run(**kwargs: Any) -> Any:
        if spec.remote:
            assert invoke_remote is not None  # checked by build_toolkit
            # The tool worker enforces the timeout and its answer travels back
            # after it; a local deadline here would cut off that answer.
            call = invoke_remote(spec.name, dict(kwargs), spec.timeout)
            output = await _guarded(spec, call)
        else:
            output = await _guarded(spec, run_tool(spec.func, kwargs, spec.timeout))
        return to_chunk(output) if isinstance(output, ToolOutput) else output

    functools.update_wrapper(run, spec.func)
    # inspect reads a function's __signature__, which typeshed does not declare.
    run.__signature__ = inspect.signature(spec.func)  # type: ignore[attr-defined]
    if spec.requires_approval is False:
        # The default ASK parks the reply waiting for a user confirmation
        # that never comes in a worker; registered tools are pre-approved.
        return FunctionTool(
            run,
            name=name,
            description=description,
            input_schema=input_schema,
            permission=PermissionDecision(
                behavior=PermissionBehavior.ALLOW,
                message="Tools registered with the agentqueue worker are allowed.",
            ),
        )
    return _approval_tool_class()(
        run, name=name, description=description, input_schema=input_schema, spec=spec
    )


@functools.cache
def _approval_tool_class() -> Callable[..., FunctionTool]:
    """A FunctionTool whose permission asks (AgentScope's ASK) when its spec says so."""
    from agentscope.permission import PermissionBehavior, PermissionDecision
    from agentscope.tool import FunctionTool

    class ApprovalTool(FunctionTool):
        def __init__(self, func: Callable[..., Any], *, spec: ToolSpec, **kw: Any) -> None:
            super().__init__(func, **kw)
            self.spec = spec

        async def check_permissions(self, tool_input: dict[str, Any], context: Any) -> Any:
            needs = self.spec.requires_approval
            try:
                ask = needs is True or (callable(needs) and bool(needs(dict(tool_input))))
            except Exception as exc:  # a predicate that cannot tell: a person decides
                log.warning("requires_approval of tool %s failed (%s): asking", self.spec.name, exc)
                ask = True
            if ask:
                # Bypass-immune: no allow rule or permission mode may skip the person.
                return PermissionDecision(
                    behavior=PermissionBehavior.ASK,
                    message=f"tool {self.spec.name} runs only once a person approves the call",
                    bypass_immune=True,
                )
            return PermissionDecision(
                behavior=PermissionBehavior.ALLOW,
                message=f"this call of tool {self.spec.name} needs no approval",
            )

    return ApprovalTool


async def _guarded(spec: ToolSpec, call: Awaitable[Any]) -> Any:
    """Await a tool call (it enforces its own timeout), turning failures into error results."""
    try:
        return await call
    except TimeoutError as e:
        if spec.timeout is not None:
            return _error(f"tool {spec.name} timed out after {spec.timeout} s")
        return _error(f"tool {spec.name} failed: {_describe(e)}")
    except ToolError as e:
        return _error(str(e) or f"tool {spec.name} failed")
    except Exception as e:
        # AgentScope would report only str(e), which is empty for many errors.
        return _error(f"tool {spec.name} failed: {_describe(e)}")


def _describe(error: BaseException) -> str:
    """`Type: message`, or just the type when the message is empty."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _error(text: str) -> ToolChunk:
    """A tool result the agent records as failed."""
    from agentscope.message import TextBlock, ToolResultState
    from agentscope.tool import ToolChunk

    return ToolChunk(content=[TextBlock(text=text)], state=ToolResultState.ERROR)
