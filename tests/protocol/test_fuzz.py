"""Decoding arbitrary bytes raises ProtocolError and nothing else, and never hangs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentqueue.protocol import (
    AgentRequest,
    Envelope,
    ProtocolError,
    ToolCall,
    decode,
    encode,
    user_message,
)

EXAMPLES = 5_000  # per strategy; four strategies make 20,000 examples per run

VALID = [
    encode(
        Envelope(
            id="e1", session_id="s1", body=AgentRequest(input=[user_message("hello")]), deadline=1.5
        )
    ),
    encode(
        Envelope(
            id="e2",
            session_id="s2",
            reply_to="r",
            body=ToolCall(name="t", arguments={"a": [1, {"b": None}]}),
        )
    ),
]


def decode_or_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert str(exc)  # every refusal says why
        assert exc.field is not None and exc.field.startswith("$")


fuzz = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@fuzz
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    decode_or_protocol_error(data)


@fuzz
@given(
    st.sampled_from(VALID), st.integers(0, 400), st.binary(min_size=1, max_size=8), st.booleans()
)
def test_truncated_and_mutated_envelopes_raise_only_protocol_error(
    valid: bytes, at: int, junk: bytes, cut: bool
) -> None:
    at %= len(valid)
    decode_or_protocol_error(valid[:at] if cut else valid[:at] + junk + valid[at + len(junk) :])


scalar = (
    st.none() | st.booleans() | st.integers(-(2**200), 2**200) | st.floats() | st.text(max_size=8)
)
json_values = (
    scalar | st.lists(scalar, max_size=3) | st.dictionaries(st.text(max_size=4), scalar, max_size=3)
)


@fuzz
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "session_id", "body", "deadline", "attempt", "trace", "key"]),
        json_values,
        max_size=8,
    )
)
def test_wrong_types_and_huge_numbers_raise_only_protocol_error(fields: dict) -> None:
    decode_or_protocol_error(json.dumps(fields, allow_nan=True).encode())


@fuzz
@given(st.integers(1, 5_000), st.sampled_from(["[", '{"a":']), st.booleans())
def test_deep_nesting_and_invalid_utf8_raise_only_protocol_error(
    depth: int, opener: str, bad_utf8: bool
) -> None:
    body = (
        '{"id":"e","session_id":"s","body":{"type":"tool_call","name":"t","arguments":{"x":'
        + opener * depth
    )
    data = body.encode() + (b"\xff\xfe" if bad_utf8 else b"")
    decode_or_protocol_error(data)


@pytest.mark.parametrize("data", [b"", b"null", b"[]", b'"x"', b"\x00" * 10, "é".encode("latin-1")])
def test_degenerate_inputs_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)
