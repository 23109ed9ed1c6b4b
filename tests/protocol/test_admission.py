"""The protocol's admission: any bytes give an admitted envelope or a refusal saying why."""

from __future__ import annotations

import time

import pytest

from agentqueue.protocol import Envelope, ToolCall, encode
from agentqueue.protocol.admission import Addressing, Refusal, addressing, admit
from agentqueue.protocol.signing import KeyRing

KEYS = KeyRing([("k2", b"current-secret-0123456789"), ("k1", b"previous-secret-0123456789")])
NOW = 1_700_000_000.0


def tool_call(**fields: object) -> bytes:
    envelope = Envelope(
        id="e1",
        session_id="s1",
        correlation_id="c1",
        reply_to="aq-reply-client",
        body=ToolCall(name="transfer", arguments={"amount": 5}),
        created_at=NOW,
    )
    for name, value in fields.items():
        setattr(envelope, name, value)
    return encode(envelope)


def refused(data: object, keys: KeyRing | None = KEYS, **kwargs: object) -> Refusal:
    verdict = admit(data, keys, now=NOW, **kwargs)  # type: ignore[arg-type]
    assert isinstance(verdict, Refusal), verdict
    return verdict


BAD_SIGNATURE = (
    "bad signature for key id 'k2': the envelope was altered or signed with another secret"
)


@pytest.mark.parametrize(
    "member",
    [
        '"sig":"k2:é"'.encode(),  # the finding: a non-ASCII byte made compare_digest raise
        b'"sig":"k2:\xff\xfe"',  # not UTF-8 at all
        b'"sig":"k2:"',
        b'"sig":"k2:' + b"0" * 64 + b'"',
    ],
)
def test_a_non_ascii_or_odd_signature_is_a_bad_signature_refusal_not_a_type_error(
    member: bytes,
) -> None:
    data = tool_call()[:-1] + b"," + member + b"}"
    verdict = refused(data)
    assert verdict.reason == BAD_SIGNATURE
    assert verdict.field == "$.sig" and not verdict.answerable


def test_a_key_id_that_is_not_text_is_refused_as_unknown_naming_its_bytes() -> None:
    verdict = refused(tool_call()[:-1] + b',"sig":"\xff\xe9:abc"}')
    assert verdict.reason == (
        "envelope signed with unknown key id '\\\\xff\\\\xe9' (this worker accepts k2, k1)"
    )


def test_a_signed_valid_envelope_is_admitted_and_carries_its_signature() -> None:
    verdict = admit(KEYS.sign(tool_call()), KEYS, now=NOW + 10)
    assert isinstance(verdict, Envelope)
    assert verdict.id == "e1" and verdict.sig is not None and verdict.sig.startswith("k2:")


def test_without_keys_an_unsigned_envelope_of_any_age_is_admitted() -> None:
    verdict = admit(tool_call(created_at=0.0), None, now=NOW)
    assert isinstance(verdict, Envelope) and verdict.created_at == 0.0


def test_a_stale_signed_envelope_is_refused_with_its_age_and_can_be_answered() -> None:
    verdict = refused(KEYS.sign(tool_call(created_at=NOW - 3600)))
    assert verdict.reason == (
        "stale envelope refused: created 3600 s ago, outside the 300 s window signed envelopes"
        " must arrive in"
    )
    assert verdict.answerable and verdict.reply_to == "aq-reply-client"  # signed: trusted


def test_a_reply_has_no_freshness_window() -> None:
    old_reply = KEYS.sign(tool_call(created_at=NOW - 86_400))
    assert isinstance(admit(old_reply, KEYS, window=None, now=NOW), Envelope)


def test_an_unsigned_envelope_is_refused_and_its_sender_is_not_answered() -> None:
    verdict = refused(tool_call(created_at=0.0))
    assert verdict.reason == (
        "unsigned envelope refused: this worker runs only envelopes signed with one of its keys"
        " (k2, k1)"
    )
    # Read for the dead letter, but not trusted: answering would let anyone pick where this
    # process sends a signed message.
    assert (verdict.id, verdict.reply_to, verdict.answerable) == ("e1", "aq-reply-client", False)


def test_bytes_over_the_limit_are_refused_before_the_signature_is_checked() -> None:
    data = KEYS.sign(tool_call())
    verdict = refused(data, max_size=100)
    assert verdict.reason == (
        f"message is {len(data)} bytes, over the 100 byte limit; send large inputs by reference"
        " (a URL) instead"
    )
    assert not verdict.answerable
    assert refused(data, None, max_size=100).answerable  # unsigned mode answers, as before


def test_invalid_utf8_in_a_string_field_is_refused_with_the_addressing_that_can_be_read() -> None:
    data = (
        b'{"id":"e7","session_id":"s\xff1","reply_to":"aq-reply-client",'
        b'"body":{"type":"tool_call","name":"t"}}'
    )
    verdict = refused(data, None)
    assert verdict.reason.startswith("not a JSON envelope: 'utf-8' codec can't decode byte 0xff")
    assert (verdict.id, verdict.session_id, verdict.reply_to) == ("e7", None, "aq-reply-client")
    assert verdict.answerable


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"id":"\xff","reply_to":"r"}', Addressing(reply_to="r")),
        (b'{"id":7,"session_id":["x"],"reply_to":"r"}', Addressing(reply_to="r")),
        (b'{"id":"a","correlation_id":"c"', Addressing()),  # truncated: not JSON
        (b"[" * 100_000, Addressing()),
        (b"\xff\xfe\x00", Addressing()),
        (b"null", Addressing()),
        (b'"just a string"', Addressing()),
        (b"", Addressing()),
    ],
)
def test_addressing_never_raises_and_keeps_whatever_fields_are_text(
    data: bytes, expected: Addressing
) -> None:
    assert addressing(data) == expected


@pytest.mark.parametrize("data", [None, "text", 42, ["a"], b"\x00" * 3, bytearray(b"{}")])
def test_anything_that_is_not_a_valid_envelope_is_a_refusal_with_a_reason(data: object) -> None:
    for keys in (None, KEYS):
        verdict = admit(data, keys)  # type: ignore[arg-type]
        assert isinstance(verdict, Refusal) and verdict.reason


def test_an_envelope_as_bytearray_or_memoryview_is_admitted_like_bytes() -> None:
    data = KEYS.sign(tool_call(created_at=time.time()))
    for form in (bytearray(data), memoryview(data)):
        assert isinstance(admit(form, KEYS), Envelope)
