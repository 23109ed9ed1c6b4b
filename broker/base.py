"""The broker interface: declare queues, publish bytes with confirms, consume with manual ack.

A broker knows bytes, queue names and dead-letter records; it never looks inside an agent's
request. Every implementation has the same delivery semantics: at-least-once, one active
consumer per queue (the first subscriber; the next takes over when it leaves), un-acked
deliveries redelivered in order when their consumer goes away.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import anyio

from agentqueue.broker.partition_check import check_partitions
from agentqueue.broker.topology import Topology
from agentqueue.protocol.codec import decode_dead_letter, encode_dead_letter
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.messages import DeadLetter
from agentqueue.protocol.signing import KeyRing


class Delivery(abc.ABC):
    """One message handed to a consumer; settle it exactly once with ack, nack or dead-letter."""

    __slots__ = ("body", "delivery_count", "queue", "redelivered")

    def __init__(self, body: bytes, queue: str, delivery_count: int, redelivered: bool) -> None:
        self.body = body
        self.queue = queue
        self.delivery_count = delivery_count  # 1 on the first delivery, +1 per redelivery
        # The broker's own word that it delivered this message before (and it was not acked):
        # what tells a redelivery from a replayed copy, so never read from a publisher's header.
        self.redelivered = redelivered

    @abc.abstractmethod
    async def ack(self) -> None:
        """Done with it: the broker forgets the message."""

    @abc.abstractmethod
    async def nack(self, *, requeue: bool = True) -> None:
        """Give it back for redelivery (requeue) or drop it to the broker's dead letters."""


CLOSE_TIMEOUT = 10.0  # seconds a subscription's close may take when its block is left


class Subscription(abc.ABC):
    """An open consumer on one queue: iterate for deliveries, close to stop and hand back."""

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Delivery: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming; un-acked deliveries go back to the queue for the next consumer."""

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Shielded: leaving the block is often a cancellation (a task group winding down), and
        # a close cut short would leave the consumer open on the broker, holding its queue (a
        # single-active-consumer partition would wait for it for ever; an unused durable reply
        # queue would never expire).
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await self.close()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What `agentqueue status` shows for a queue."""

    name: str
    ready: int
    unacked: int | None
    consumers: int
    active_consumer: str | None = None


class Broker(abc.ABC):
    """A connection to one message broker."""

    url: str
    max_message_size: int | None = None  # bytes; None when the broker has no practical limit
    # Times the connection came back after it was lost. What sat in an exclusive queue of the
    # lost connection (a reply not yet read) went with it; whoever waits for one asks again.
    reconnects: int = 0

    async def __aenter__(self) -> Broker:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raises `BrokerConnectionError` naming the URL when it cannot."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close consumers and the connection; idempotent."""

    async def declare(self, topology: Topology) -> None:
        """Create the partition queues and the dead-letter queue if missing (idempotent).

        Refused with `PartitionMismatch`, before anything is created, when the namespace's
        queues already have other partition counts than `topology`.
        """
        await check_partitions(self, topology)
        await self._declare(topology)

    @abc.abstractmethod
    async def _declare(self, topology: Topology) -> None:
        """Create the queues of `topology` that are missing."""

    @abc.abstractmethod
    async def declare_reply_queue(
        self, name: str, *, durable: bool = False, expires: float | None = None
    ) -> None:
        """A reply queue: exclusive to this connection, or durable so a batch can resume.

        `expires`: seconds a durable queue may go unused before the broker deletes it (RabbitMQ's
        `x-expires`; MNS has no such setting: `agentqueue batch forget` deletes one there).
        """

    @abc.abstractmethod
    async def delete_queue(self, name: str) -> None:
        """Remove a queue and its messages."""

    signing: KeyRing | None = None  # when set, every envelope published is signed with it

    # Seconds the broker itself can hold a message back before delivering it (MNS:
    # DelaySeconds, up to 7 days); 0 when it cannot, and delayed requests wait in timers.
    max_delay: float = 0.0

    async def publish(
        self, queue: str, body: bytes, *, sign: bool = True, delay: float = 0.0
    ) -> None:
        """Publish persistently (signed when the broker has keys); returns once confirmed.

        `delay`: seconds the broker holds the message back (at most `max_delay`).
        """
        if sign and self.signing is not None:
            body = self.signing.sign(body)
        if delay > 0:
            if delay > self.max_delay:
                raise ValueError(
                    f"{type(self).__name__} can hold a message back at most"
                    f" {self.max_delay:.0f} s, not {delay:.0f} s; park it in a timer instead"
                )
            await self._publish_delayed(queue, body, delay)
            return
        await self._publish(queue, body)

    async def _publish_delayed(self, queue: str, body: bytes, delay: float) -> None:
        """Publish bytes the broker delivers `delay` seconds from now (where `max_delay` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} cannot delay messages")

    @abc.abstractmethod
    async def _publish(self, queue: str, body: bytes) -> None:
        """Publish bytes as they are; returns once the broker has confirmed the message."""

    @abc.abstractmethod
    async def consume(self, queue: str, *, prefetch: int = 32) -> Subscription:
        """Subscribe (first in line is active) with at most `prefetch` un-acked deliveries."""

    @abc.abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Depth and consumers of one queue."""

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        topology: Topology,
        *,
        envelope_id: str | None = None,
        session_id: str | None = None,
    ) -> None:
        """Move a delivery to the dead-letter queue with its reason, then ack it."""
        record = DeadLetter(
            reason=reason,
            queue=delivery.queue,
            payload=bytes(delivery.body),
            failed_at=time.time(),
            attempts=delivery.delivery_count,
            envelope_id=envelope_id,
            session_id=session_id,
        )
        await self.publish(topology.dead_letter_queue, encode_dead_letter(record), sign=False)
        await delivery.ack()

    async def get(self, queue: str) -> Delivery | None:
        """One message without subscribing, or None when the queue is empty."""
        raise NotImplementedError(f"{type(self).__name__} cannot fetch single messages")

    async def broadcast(self, topic: str, body: bytes) -> None:
        """Send a transient message to every current listener of `topic` (no confirm)."""
        raise NotImplementedError(f"{type(self).__name__} has no broadcast topics")

    async def listen(self, topic: str) -> Subscription:
        """Receive what is broadcast on `topic` from now on."""
        raise NotImplementedError(f"{type(self).__name__} has no broadcast topics")


def read_dead_letter(body: bytes, queue: str) -> DeadLetter:
    """A dead-letter record, also for raw bytes a broker dead-lettered on its own."""
    try:
        return decode_dead_letter(body)
    except ProtocolError:
        return DeadLetter(
            reason="dead-lettered by the broker (delivery limit reached or rejected)",
            queue=queue,
            payload=body,
            failed_at=0.0,
        )
