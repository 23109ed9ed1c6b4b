"""Encoding and strict decoding of envelopes: one Encoder and one typed Decoder, built once."""

from __future__ import annotations

import re

import msgspec

from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import PROTOCOL_VERSION, DeadLetter, Envelope

DEFAULT_MAX_SIZE = 256 * 1024

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_FIELD = re.compile(r" - at `([^`]*)`$")


class _Version(msgspec.Struct):
    v: int = PROTOCOL_VERSION


_version_decoder = msgspec.json.Decoder(_Version)


def encode(envelope: Envelope) -> bytes:
    """The envelope as msgspec JSON bytes; done once per message."""
    return _encoder.encode(envelope)


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Bytes to an `Envelope`, or one `ProtocolError` naming the bad field."""
    if len(data) > max_size:
        raise ProtocolError(
            f"message is {len(data)} bytes, over the {max_size} byte limit;"
            " send large inputs by reference (a URL) instead",
            field="$",
        )
    try:
        envelope = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        _raise_newer_version(data)
        raise _protocol_error(exc) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a JSON envelope: {exc}", field="$") from None
    if envelope.v != PROTOCOL_VERSION:
        raise _version_error(envelope.v)
    return envelope


def encode_dead_letter(record: DeadLetter) -> bytes:
    """A dead-letter record as JSON bytes (the payload rides base64-encoded)."""
    return _encoder.encode(record)


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Bytes from a dead-letter queue to a `DeadLetter`, or `ProtocolError`."""
    try:
        return _dead_letter_decoder.decode(data)
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not a dead-letter record: {exc}", field="$") from None


def _protocol_error(exc: msgspec.ValidationError) -> ProtocolError:
    text = str(exc)
    match = _FIELD.search(text)
    field = match.group(1) if match else "$"
    return ProtocolError(f"invalid envelope: {text}", field=field)


def _raise_newer_version(data: bytes | bytearray | memoryview) -> None:
    # A newer publisher may use types this version cannot decode: say so, not "unknown type".
    try:
        v = _version_decoder.decode(data).v
    except (msgspec.MsgspecError, RecursionError):
        return
    if v != PROTOCOL_VERSION:
        raise _version_error(v)


def _version_error(v: int) -> ProtocolError:
    return ProtocolError(
        f"envelope protocol version {v} is not supported (this worker speaks v{PROTOCOL_VERSION});"
        " upgrade the worker or publish v1",
        field="$.v",
    )
