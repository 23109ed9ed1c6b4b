"""Wire protocol v1: envelopes, bodies, codec and partitioning. Imports nothing else of ours."""

from agentqueue.protocol.codec import (
    DEFAULT_MAX_SIZE,
    decode,
    decode_dead_letter,
    encode,
    encode_dead_letter,
)
from agentqueue.protocol.errors import AgentQueueError, ProtocolError
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import (
    PROTOCOL_VERSION,
    TERMINAL_KINDS,
    AgentRequest,
    Body,
    Cancel,
    Content,
    DataContent,
    DeadLetter,
    Envelope,
    ImageContent,
    Message,
    ResultEvent,
    ResultKind,
    TextContent,
    ToolCall,
    ToolResult,
    TraceContext,
    Usage,
    user_message,
)
from agentqueue.protocol.partitioning import parse_partitions, partition_for
from agentqueue.protocol.schema import envelope_schema

__all__ = [
    "DEFAULT_MAX_SIZE",
    "PROTOCOL_VERSION",
    "TERMINAL_KINDS",
    "AgentQueueError",
    "AgentRequest",
    "Body",
    "Cancel",
    "Content",
    "DataContent",
    "DeadLetter",
    "Envelope",
    "ImageContent",
    "Message",
    "ProtocolError",
    "ResultEvent",
    "ResultKind",
    "TextContent",
    "ToolCall",
    "ToolResult",
    "TraceContext",
    "Usage",
    "decode",
    "decode_dead_letter",
    "encode",
    "encode_dead_letter",
    "envelope_schema",
    "new_id",
    "parse_partitions",
    "partition_for",
    "user_message",
]
