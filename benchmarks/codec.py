"""Job 5: encode + decode of a typical envelope, in-process: msgspec (agentqueue's codec) vs a
pydantic v2 model of the same shape vs stdlib json on plain dicts (no validation)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, Field

from agentqueue.protocol.codec import decode, encode
from agentqueue.protocol.messages import AgentRequest, Envelope, TraceContext, user_message


def typical_envelope() -> Envelope:
    """An agent request as a backend sends it: one user message, a deadline, a trace context."""
    now = time.time()
    return Envelope(
        id="0193b6c2f1a87c3e9d4b5a6f7e8d9c0b",
        session_id="session-7f3a2b",
        correlation_id="0193b6c2f1a87c3e9d4b5a6f7e8d9c0b",
        reply_to="aq-reply-client-3f2a1b0c9d8e",
        body=AgentRequest(
            input=[
                user_message("What's the weather in Paris today? And should I take an umbrella?")
            ],
            agent="weather",
            session_id="session-7f3a2b",
            user_id="user-42",
        ),
        created_at=now,
        deadline=now + 300,
        trace=TraceContext(traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    )


class PTextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str = ""
    delta: bool | None = None
    index: int | None = None


class PMessage(BaseModel):
    role: Literal["user", "assistant", "system", "tool"] = "user"
    content: list[PTextContent] | str | None = None
    type: str = "message"
    id: str | None = None


class PAgentRequest(BaseModel):
    type: Literal["agent_request"] = "agent_request"
    input: list[PMessage]
    agent: str | None = None
    stream: bool = True
    session_id: str | None = None
    user_id: str | None = None


class PToolCall(BaseModel):
    type: Literal["tool_call"] = "tool_call"
    name: str
    arguments: dict[str, Any] = {}
    call_id: str | None = None


class PTrace(BaseModel):
    traceparent: str
    tracestate: str | None = None


class PEnvelope(BaseModel):
    id: str
    session_id: str
    body: Annotated[PAgentRequest | PToolCall, Field(discriminator="type")]
    v: int = 1
    key: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    attempt: int = 1
    created_at: float = 0.0
    deadline: float | None = None
    trace: PTrace | None = None


def _ns_per_op(fn: Any, ops: int) -> float:
    for _ in range(min(ops, 1000)):
        fn()
    best = float("inf")
    for _ in range(3):  # best of three: the least disturbed by the rest of the machine
        start = time.perf_counter_ns()
        for _ in range(ops):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / ops)
    return best


def run(ops: int) -> dict[str, Any]:
    """ns per encode + decode round trip for each codec, and the encoded size."""
    envelope = typical_envelope()
    data = encode(envelope)
    model = PEnvelope.model_validate_json(data)
    plain = msgspec.to_builtins(envelope)
    results = {
        "msgspec (agentqueue.protocol)": (lambda: decode(encode(envelope)), len(data)),
        "pydantic v2 model": (
            lambda: PEnvelope.model_validate_json(model.model_dump_json(exclude_none=True)),
            len(model.model_dump_json(exclude_none=True)),
        ),
        "stdlib json (dicts, no validation)": (
            lambda: json.loads(json.dumps(plain)),
            len(json.dumps(plain)),
        ),
    }
    return {
        "ops": ops,
        "codecs": {
            name: {"ns_per_op": _ns_per_op(fn, ops), "bytes": size}
            for name, (fn, size) in results.items()
        },
    }
