"""Strict decoding: one ProtocolError naming the field; AgentScope Runtime requests decode."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from agentqueue.protocol import (
    AgentRequest,
    Approval,
    ApprovalRequest,
    Envelope,
    ProtocolError,
    ResultEvent,
    TextContent,
    decode,
    encode,
    envelope_schema,
    user_message,
)


def envelope(**fields: object) -> Envelope:
    return Envelope(
        id="e1", session_id="s1", body=AgentRequest(input=[user_message("hi")]), **fields
    )  # type: ignore[arg-type]


def test_an_envelope_survives_encode_and_decode_unchanged() -> None:
    original = envelope(reply_to="aq-reply-x", deadline=123.5, attempt=2)
    assert decode(encode(original)) == original


def test_an_agentscope_runtime_request_json_decodes_into_agent_request() -> None:
    runtime_request = {
        "input": [
            {"role": "user", "type": "message", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "user",
                "type": "message",
                "content": [{"type": "image", "image_url": "https://example.com/cat.png"}],
            },
        ],
        "stream": True,
        "session_id": "s1",
        "user_id": "u1",
        "temperature": 0.2,
        "some_future_field": {"ignored": True},
    }
    request = msgspec.json.decode(json.dumps(runtime_request), type=AgentRequest)
    assert request.session_id == "s1" and request.user_id == "u1"
    assert request.input[0].content == [TextContent(text="hi")]
    assert request.input[0].text() == "hi"
    assert request.temperature == 0.2


def test_an_unknown_body_type_names_the_field() -> None:
    raw = b'{"id":"e1","session_id":"s1","body":{"type":"launch_missiles"}}'
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.field == "$.body.type"
    assert str(info.value) == "invalid envelope: Invalid value 'launch_missiles' - at `$.body.type`"


def test_a_wrong_type_names_the_field() -> None:
    raw = b'{"id":"e1","session_id":"s1","attempt":"two","body":{"type":"cancel","request_id":"r"}}'
    with pytest.raises(ProtocolError, match=r"Expected `int`, got `str` - at `\$.attempt`"):
        decode(raw)


def test_malformed_bytes_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a JSON envelope"):
        decode(b"\xff\xfe not json")


def test_a_newer_major_version_is_refused_with_advice() -> None:
    raw = b'{"v":2,"id":"e1","session_id":"s1","body":{"type":"something_new"}}'
    with pytest.raises(ProtocolError, match="protocol version 2 is not supported") as info:
        decode(raw)
    assert info.value.field == "$.v"


def test_a_body_over_the_size_limit_is_refused_before_parsing() -> None:
    big = encode(envelope())
    with pytest.raises(ProtocolError, match=rf"{len(big)} bytes, over the 64 byte limit"):
        decode(big, max_size=64)


def test_result_events_know_whether_they_are_terminal() -> None:
    assert not ResultEvent(request_id="r", kind="delta").terminal
    assert all(
        ResultEvent(request_id="r", kind=k).terminal
        for k in ("final", "failed", "cancelled", "timed_out")
    )


def test_approval_required_is_not_terminal_and_names_the_call_waiting() -> None:
    data = (
        b'{"id":"r1","session_id":"s","body":{"type":"result","request_id":"q1",'
        b'"kind":"approval_required","approval":{"call_id":"c1","tool":"pay",'
        b'"arguments":{"amount":5},"expires_at":12.5}}}'
    )
    event = decode(data).body
    assert isinstance(event, ResultEvent) and not event.terminal
    assert event.approval == ApprovalRequest("c1", "pay", {"amount": 5}, 12.5)
    decision = decode(
        b'{"id":"a1","session_id":"s","body":{"type":"approval","request_id":"q1",'
        b'"approved":false,"reason":"no"}}'
    ).body
    assert decision == Approval(request_id="q1", approved=False, reason="no")


def test_the_json_schema_covers_every_body_type() -> None:
    schema = json.dumps(envelope_schema())
    for tag in ("agent_request", "tool_call", "tool_result", "result", "cancel", "approval"):
        assert f'"{tag}"' in schema


def test_the_json_schema_and_the_readme_name_every_envelope_field() -> None:
    fields = set(Envelope.__struct_fields__)
    assert "replay_of" in fields  # `dlq replay`'s link to the dead letter, optional (additive)
    schema = envelope_schema()
    envelope = schema["$defs"]["Envelope"]
    assert set(envelope["properties"]) == fields
    assert "replay_of" not in envelope["required"]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = readme.split("One message is one JSON `Envelope` (", 1)[1].split(")", 1)[0]
    assert {name.strip(" `\n") for name in listed.split(",")} == fields


def test_an_envelope_naming_a_reply_queue_no_broker_takes_is_refused_naming_the_field() -> None:
    data = (
        b'{"id":"e1","session_id":"s","reply_to":"caf\xc3\xa9 queue",'
        b'"body":{"type":"cancel","request_id":"x"}}'
    )
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.field == "$.reply_to"
    assert str(caught.value) == (
        "invalid envelope: Expected `str` matching regex '^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$'"
        " - at `$.reply_to`"
    )


def test_a_result_kind_added_later_decodes_as_a_terminal_result_naming_it() -> None:
    from agentqueue.client import raise_for_kind
    from agentqueue.errors import RequestFailed

    data = (
        b'{"id":"r1","session_id":"s","correlation_id":"q1",'
        b'"body":{"type":"result","request_id":"q1","kind":"paused","error":"awaiting approval"}}'
    )
    event = decode(data).body
    assert event.terminal  # type: ignore[union-attr]
    with pytest.raises(RequestFailed) as caught:
        raise_for_kind(event)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "the worker answered 'paused', a result kind this client does not know: awaiting approval"
    )
