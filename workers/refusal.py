"""Answering the caller of a message that was refused before it could be decoded."""

from __future__ import annotations

import time

import msgspec

from agentqueue.broker.base import Broker
from agentqueue.protocol.codec import encode
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import Envelope, ResultEvent


class Addressing(msgspec.Struct):
    """The fields needed to answer a refused message, read leniently from its bytes."""

    id: str | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None


_addressing = msgspec.json.Decoder(Addressing)


def addressing(data: bytes) -> Addressing:
    """Whatever addressing fields the bytes have; empty when they are not JSON at all."""
    try:
        return _addressing.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        return Addressing()


async def answer_refused(broker: Broker, address: Addressing, reason: str) -> None:
    """Send the caller a `failed` result carrying the refusal reason, if it named a reply queue."""
    if not (address.reply_to and address.id):
        return
    reply = Envelope(
        id=new_id(),
        session_id=address.session_id or "",
        correlation_id=address.correlation_id or address.id,
        body=ResultEvent(request_id=address.id, kind="failed", error=reason),
        created_at=time.time(),
    )
    await broker.publish(address.reply_to, encode(reply))
