"""Wire protocol v1: the envelope and its bodies, as msgspec Structs.

One message is one `Envelope`, self-contained in the message body. The body is a tagged union
keyed by its `type` field, so a decoder picks the right Struct without an `if type == ...` chain.
`AgentRequest` accepts the request JSON of AgentScope Runtime (`input` messages with typed
content blocks, `session_id`, `user_id`, sampling options); unknown extra fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec

PROTOCOL_VERSION = 1

# --- content blocks (AgentScope Runtime's message content) ---------------------------------------


class TextContent(msgspec.Struct, tag="text", tag_field="type", omit_defaults=True):
    text: str = ""
    delta: bool | None = None
    index: int | None = None


class ImageContent(msgspec.Struct, tag="image", tag_field="type", omit_defaults=True):
    image_url: str | None = None
    delta: bool | None = None
    index: int | None = None


class AudioContent(msgspec.Struct, tag="audio", tag_field="type", omit_defaults=True):
    data: str | None = None
    format: str | None = None
    delta: bool | None = None
    index: int | None = None


class FileContent(msgspec.Struct, tag="file", tag_field="type", omit_defaults=True):
    file_url: str | None = None
    file_id: str | None = None
    filename: str | None = None
    file_data: str | None = None
    delta: bool | None = None
    index: int | None = None


class DataContent(msgspec.Struct, tag="data", tag_field="type", omit_defaults=True):
    data: dict[str, Any] = {}
    delta: bool | None = None
    index: int | None = None


class RefusalContent(msgspec.Struct, tag="refusal", tag_field="type", omit_defaults=True):
    refusal: str = ""
    delta: bool | None = None
    index: int | None = None


Content = TextContent | ImageContent | AudioContent | FileContent | DataContent | RefusalContent


class Message(msgspec.Struct, omit_defaults=True):
    """One message of a conversation, as AgentScope Runtime shapes it."""

    role: Literal["user", "assistant", "system", "tool"] = "user"
    content: list[Content] | str | None = None
    type: str = "message"
    id: str | None = None
    object: str | None = None
    status: str | None = None
    sequence_number: int | None = None
    error: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    usage: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def text(self) -> str:
        """The message's text blocks joined, or the plain string content."""
        if isinstance(self.content, str):
            return self.content
        return "".join(b.text for b in self.content or () if isinstance(b, TextContent))


def user_message(text: str) -> Message:
    """A user message with one text block."""
    return Message(role="user", content=[TextContent(text=text)])


# --- bodies -------------------------------------------------------------------------------------


class AgentRequest(msgspec.Struct, tag="agent_request", tag_field="type", omit_defaults=True):
    """Run an agent on `input`; the shape of AgentScope Runtime's `AgentRequest` plus `agent`."""

    input: list[Message]
    agent: str | None = None  # registered agent name; None means the app's default agent
    stream: bool = True
    id: str | None = None
    model: str | None = None
    top_p: float | None = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    session_id: str | None = None
    user_id: str | None = None
    on_busy: OnBusy | None = None  # None: the agent's default (see App.agent)


class ToolCall(msgspec.Struct, tag="tool_call", tag_field="type", omit_defaults=True):
    """Run the registered tool `name` with `arguments` on a tool worker."""

    name: str
    arguments: dict[str, Any] = {}
    call_id: str | None = None
    timeout: float | None = None


class Image(msgspec.Struct, omit_defaults=True):
    """An image a tool returned: inline `data`, or a `ref` to fetch with `Client.fetch_artifact`.

    Large images travel by reference so that the envelope stays within the broker's size limit.
    """

    media_type: str
    width: int = 0
    height: int = 0
    size: int = 0  # bytes of the image, inline or not
    data: bytes | None = None  # base64 in JSON
    ref: str | None = None


class ToolResult(msgspec.Struct, tag="tool_result", tag_field="type", omit_defaults=True):
    """The outcome of one `ToolCall`; `ok=False` carries the error text in `output`."""

    call_id: str
    name: str
    ok: bool
    output: str
    worker: str | None = None
    images: list[Image] = []  # screenshots and the like, beside the text


class Usage(msgspec.Struct, omit_defaults=True):
    """The model tokens one request used, summed over its model calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0  # model calls that finished (tries refused by the provider are not counted)
    model: str | None = None  # the model called; several are joined with ", "

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


# Result kinds this version sends. The field is a plain string so that a reader meets a kind
# added later as what it is — a terminal result naming it — instead of refusing the reply.
RESULT_KINDS = (
    "delta",  # a piece of the streamed answer
    "final",  # the answer
    "failed",  # dead-lettered: `error` says why
    "cancelled",  # a Cancel interrupted it
    "timed_out",  # its deadline passed
    "rejected",  # on_busy="reject" and its session was busy
    "interrupted",  # a newer turn interrupted it (on_busy="interrupt" or "rollback")
    "superseded",  # a newer turn replaced it before it started (on_busy="latest")
    "approval_required",  # paused before a tool that needs a person's yes: `approval` says which
)
ResultKind = str
# Kinds after which more events of the same request follow. A reader that predates one meets
# it as a terminal result naming it, as the rule for kinds added later says.
PROGRESS_KINDS: frozenset[str] = frozenset({"delta", "approval_required"})
TERMINAL_KINDS: frozenset[str] = frozenset(RESULT_KINDS) - PROGRESS_KINDS
# What a new turn does when its session is busy (see docs/architecture.md, "Busy sessions").
OnBusy = Literal["enqueue", "reject", "interrupt", "rollback", "latest"]


class ApprovalRequest(msgspec.Struct, omit_defaults=True):
    """A tool call waiting for a person's decision: what would run, and until when."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = {}
    expires_at: float | None = None  # unix seconds; no decision by then counts as a denial


class ResultEvent(msgspec.Struct, tag="result", tag_field="type", omit_defaults=True):
    """One step of a request's outcome: stream deltas, then exactly one terminal event."""

    request_id: str
    kind: ResultKind
    # The event's place in the request's stream, counted across attempts (1, 2, …): a retried
    # attempt goes on numbering, so no two events of a request share one. 0 from older workers.
    seq: int = 0
    text: str = ""
    error: str | None = None
    output: list[Message] | None = None
    worker: str | None = None
    usage: Usage | None = None  # on the final event of a turn that called a model
    approval: ApprovalRequest | None = None  # on `approval_required`: the call waiting
    # Which run of the handler made this event (1 first; each retry or redelivery that runs it
    # again counts one up). A `delta` with `restart=True` and no text opens attempt `attempt`:
    # what earlier attempts streamed is void, the stream starts over from here. An older
    # reader sees an empty delta, which changes nothing it shows.
    attempt: int = 1
    restart: bool = False

    @property
    def terminal(self) -> bool:
        """True for the one event that ends the request: every kind but `delta` and
        `approval_required`, including kinds this version does not know yet."""
        return self.kind not in PROGRESS_KINDS


class Cancel(msgspec.Struct, tag="cancel", tag_field="type", omit_defaults=True):
    """Interrupt the running request `request_id` of the same session."""

    request_id: str
    reason: str | None = None


class Approval(msgspec.Struct, tag="approval", tag_field="type", omit_defaults=True):
    """A person's decision on a tool call of the paused request `request_id` of the same
    session: `approved` runs it once and resumes the turn; otherwise the agent is told `reason`."""

    request_id: str
    approved: bool
    call_id: str | None = None  # None: the one call the request waits on
    reason: str | None = None


Body = AgentRequest | ToolCall | ToolResult | ResultEvent | Cancel | Approval


class TraceContext(msgspec.Struct, omit_defaults=True):
    """W3C trace context carried in the body, since MNS messages have no headers."""

    traceparent: str
    tracestate: str | None = None


# A queue a reply may be sent to: ASCII letters, digits and `-_.:` (what RabbitMQ and MNS both
# take). Anything else is refused at decode, so an answer is never owed to a queue that cannot be.
QueueName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")]


class Envelope(msgspec.Struct, omit_defaults=True):
    """One message on any queue: routing, delivery and trace metadata around one body."""

    id: str
    session_id: str
    body: Body
    v: int = PROTOCOL_VERSION
    key: str | None = None  # partition key; None means the session id
    correlation_id: str | None = None
    reply_to: QueueName | None = None
    attempt: int = 1
    created_at: float = 0.0  # unix seconds
    deadline: float | None = None  # unix seconds
    trace: TraceContext | None = None
    replay_of: str | None = None  # the id of the dead letter this envelope replays (`dlq replay`)
    not_before: float | None = None  # unix seconds: a delayed request runs at this time, not before
    sig: str | None = None  # "<key id>:<hex HMAC>", appended last by a KeyRing (see signing.py)

    @property
    def type(self) -> str:
        """The body's tag: agent_request, tool_call, tool_result, result, cancel or approval."""
        return cast(str, self.body.__struct_config__.tag)  # every body's tag is a str

    @property
    def partition_key(self) -> str:
        """The key that picks this envelope's partition."""
        return self.key if self.key is not None else self.session_id


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """What the dead-letter queue holds: the original bytes, untouched, and why they are there."""

    reason: str
    queue: str
    payload: bytes
    failed_at: float
    attempts: int = 1
    envelope_id: str | None = None
    session_id: str | None = None
