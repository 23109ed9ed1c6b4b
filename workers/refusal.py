"""Answering the caller of a message that was refused before it could run."""

from __future__ import annotations

import logging
import time

from agentqueue.broker.base import Broker
from agentqueue.protocol.admission import Addressing, Refusal, addressing
from agentqueue.protocol.codec import encode
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import Envelope, ResultEvent

log = logging.getLogger("agentqueue.worker")

__all__ = ["Addressing", "addressing", "answer_refused"]


async def answer_refused(broker: Broker, refused: Refusal) -> None:
    """Send the caller a `failed` result carrying the refusal reason, when it may be answered.

    Never raises: the refused message is already dead-lettered with its reason, so an answer
    that cannot be sent (a reply queue that is gone, a name no broker takes) is only logged.
    """
    if not (refused.answerable and refused.reply_to and refused.id):
        return
    reply = Envelope(
        id=new_id(),
        session_id=refused.session_id or "",
        correlation_id=refused.correlation_id or refused.id,
        body=ResultEvent(request_id=refused.id, kind="failed", error=refused.reason),
        created_at=time.time(),
    )
    try:
        await broker.publish(refused.reply_to, encode(reply))
    except Exception as exc:
        log.warning("could not tell %r that %s was refused: %s", refused.reply_to, refused.id, exc)
