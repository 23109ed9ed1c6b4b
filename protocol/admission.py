"""Admission of bytes from a queue: size, signature, strict decode, freshness.

`admit` is total: for any bytes it returns an admitted `Envelope` or a `Refusal` that says why,
and it raises nothing. The checks run in order and bytes that fail one are not looked at
further, except by the lenient read of their addressing (`addressing`), so that the caller can
be told. The replay window needs a store and is added on top of this by
`agentqueue.workers.admission`; replies (which may legitimately be re-sent later) use this
without a freshness window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from agentqueue.protocol.codec import DEFAULT_MAX_SIZE, decode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import Envelope
from agentqueue.protocol.signing import KeyRing

DEFAULT_WINDOW = 300.0  # seconds a signed envelope may be away from now (either way)
INTERNAL = "admission could not check the message"  # prefix of a refusal no check foresaw


@dataclass(frozen=True, slots=True)
class Addressing:
    """The fields needed to answer a message, read leniently from bytes that may be garbage."""

    id: str | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Bytes that were not admitted: why, and whatever addressing could be read from them.

    `answerable` is False when answering would let the sender choose where this process sends
    a signed message (the bytes were not proven to come from a key holder) or would reach a
    caller that is owed another answer (a replayed copy of a request still being handled).
    """

    reason: str
    field: str | None = None
    id: str | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    answerable: bool = True


class _Fields(msgspec.Struct):
    # Raw, so a field of the wrong type or with invalid UTF-8 spoils only itself.
    id: msgspec.Raw = msgspec.Raw(b"null")
    session_id: msgspec.Raw = msgspec.Raw(b"null")
    correlation_id: msgspec.Raw = msgspec.Raw(b"null")
    reply_to: msgspec.Raw = msgspec.Raw(b"null")


_fields = msgspec.json.Decoder(_Fields)
_text = msgspec.json.Decoder(str | None)


def _lenient(raw: msgspec.Raw) -> str | None:
    try:
        return _text.decode(raw)
    except Exception:  # any garbage in one field leaves the field out, nothing more
        return None


def addressing(data: Any) -> Addressing:
    """Whatever addressing fields `data` has; empty when it is not a JSON object at all."""
    try:
        fields = _fields.decode(data)
    except Exception:  # not JSON, not an object, nested too deep, not even bytes: nothing
        return Addressing()
    return Addressing(
        _lenient(fields.id),
        _lenient(fields.session_id),
        _lenient(fields.correlation_id),
        _lenient(fields.reply_to),
    )


def refusal(
    data: Any, reason: str, *, field: str | None = None, answerable: bool = True
) -> Refusal:
    """A `Refusal` of `data` carrying the addressing it has."""
    a = addressing(data)
    return Refusal(
        reason, field, a.id, a.session_id, a.correlation_id, a.reply_to, answerable=answerable
    )


def admit(
    data: Any,
    keys: KeyRing | None = None,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    window: float | None = DEFAULT_WINDOW,
    now: float | None = None,
) -> Envelope | Refusal:
    """`data` as an admitted `Envelope`, or a `Refusal` saying why not; never raises.

    Checks, in order: size; the signature, when `keys` is set; strict decoding; and, when
    `keys` is set and `window` is not None, that `created_at` (or, for a delayed envelope,
    `not_before`) is within `window` seconds of `now`. Decoding comes before freshness so
    that bytes are decoded once, and only after the signature is proven.
    """
    try:
        return _admit(data, keys, max_size, window, now)
    except Exception as exc:  # a check failing in a way none of them foresaw: still refused
        return refusal(
            data, f"{INTERNAL}: {type(exc).__name__}: {exc}"[:500], answerable=keys is None
        )


def _admit(
    data: Any, keys: KeyRing | None, max_size: int, window: float | None, now: float | None
) -> Envelope | Refusal:
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        return Refusal(
            f"not a message: got {type(data).__name__}, not bytes", "$", answerable=False
        )
    signed = keys is not None
    if len(data) > max_size:
        return refusal(
            data,
            f"message is {len(data)} bytes, over the {max_size} byte limit;"
            " send large inputs by reference (a URL) instead",
            field="$",
            # Signed bytes this large are not verified, so their addressing is not trusted.
            answerable=not signed,
        )
    if keys is not None:
        try:
            keys.verify(data)
        except ProtocolError as exc:
            return refusal(data, str(exc), field=exc.field, answerable=False)
    try:
        envelope = decode(data, max_size=max_size)
    except ProtocolError as exc:
        return refusal(data, str(exc), field=exc.field)
    if keys is not None and window is not None:
        now = time.time() if now is None else now
        age = now - envelope.created_at
        # A delayed envelope that the broker held back (MNS DelaySeconds) is fresh around
        # when it became due; a replay then is still caught by the replay window and Dedup.
        if envelope.not_before is not None and abs(now - envelope.not_before) < abs(age):
            age = now - envelope.not_before
        if not abs(age) <= window:  # `not <=`: a NaN age is stale too
            return refused_envelope(
                envelope,
                f"stale envelope refused: created {age:.0f} s ago, outside the {window:.0f} s"
                " window signed envelopes must arrive in",
                "$.created_at",
            )
    return envelope


def refused_envelope(
    envelope: Envelope, reason: str, field: str, *, answerable: bool = True
) -> Refusal:
    """A `Refusal` of an envelope that decoded (stale, replayed), addressed from its fields."""
    return Refusal(
        reason,
        field,
        envelope.id,
        envelope.session_id,
        envelope.correlation_id,
        envelope.reply_to,
        answerable=answerable,
    )
