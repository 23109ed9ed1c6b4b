"""`memory://NAME`: an in-process broker with the same semantics as the real ones.

Not a mock: queues, single active consumer per queue, prefetch, manual ack, redelivery in order
when a consumer goes away, dead letters. Every `MemoryBroker` opened on the same URL in one
process shares one hub of queues, so a client and several workers talk as they would over a
network. It is what `agentqueue demo` and the unit tests run on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from urllib.parse import urlsplit

from agentqueue.broker.base import Broker, Delivery, QueueStats, Subscription
from agentqueue.broker.errors import BrokerConnectionError, BrokerError, QueueMissing
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import redact_url

_hubs: dict[str, _Hub] = {}


class _Message:
    __slots__ = ("body", "delivery_count", "seq")

    def __init__(self, body: bytes, seq: int) -> None:
        self.body = body
        self.seq = seq
        self.delivery_count = 0


class _Queue:
    def __init__(self, name: str, owner: MemoryBroker | None, dead_letter: str | None) -> None:
        self.name = name
        self.owner = owner  # the connection an exclusive queue belongs to; None when durable
        self.dead_letter = dead_letter
        self.ready: deque[_Message] = deque()
        self.consumers: list[_Consumer] = []

    def put(self, message: _Message) -> None:
        self.ready.append(message)
        self.dispatch()

    def give_back(self, messages: list[_Message]) -> None:
        # Returned messages go back where they were, so a partition keeps its order.
        merged = sorted(itertools.chain(self.ready, messages), key=lambda m: m.seq)
        self.ready = deque(merged)
        self.dispatch()

    def dispatch(self) -> None:
        if not self.consumers:
            return
        active = self.consumers[0]
        while self.ready and len(active.unacked) < active.prefetch:
            message = self.ready.popleft()
            message.delivery_count += 1
            active.unacked[message.seq] = message
            active.inbox.put_nowait(_MemoryDelivery(active, message))


class _Hub:
    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.topics: dict[str, list[_Queue]] = {}
        self.seq = itertools.count()

    def queue(self, name: str) -> _Queue:
        try:
            return self.queues[name]
        except KeyError:
            raise QueueMissing(
                f"queue {name!r} does not exist; declare the topology first"
            ) from None


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_message")

    def __init__(self, consumer: _Consumer, message: _Message) -> None:
        count = message.delivery_count
        super().__init__(message.body, consumer.queue.name, count, redelivered=count > 1)
        self._consumer = consumer
        self._message = message

    def _settle(self) -> _Message:
        message = self._consumer.unacked.pop(self._message.seq, None)
        if message is None:
            raise BrokerError(
                f"delivery from {self.queue!r} was already settled or handed back"
                " (its consumer closed)"
            )
        return message

    async def ack(self) -> None:
        self._settle()
        self._consumer.queue.dispatch()

    async def nack(self, *, requeue: bool = True) -> None:
        message = self._settle()
        queue = self._consumer.queue
        if requeue:
            queue.give_back([message])
        else:
            if queue.dead_letter and queue.dead_letter in self._consumer.hub.queues:
                self._consumer.hub.queues[queue.dead_letter].put(
                    _Message(message.body, message.seq)
                )
            queue.dispatch()


class _Consumer(Subscription):
    def __init__(self, hub: _Hub, queue: _Queue, prefetch: int) -> None:
        self.hub = hub
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.unacked: dict[int, _Message] = {}
        self.inbox: asyncio.Queue[_MemoryDelivery | None] = asyncio.Queue()
        self.closed = False
        queue.consumers.append(self)
        queue.dispatch()

    async def __anext__(self) -> Delivery:
        if self.closed:
            raise StopAsyncIteration
        delivery = await self.inbox.get()
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def close(self) -> None:
        self.detach()

    def detach(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.consumers.remove(self)
        returned = list(self.unacked.values())
        self.unacked.clear()
        self.inbox.put_nowait(None)
        self.queue.give_back(returned)


class MemoryBroker(Broker):
    """An in-process broker; brokers opened on the same `memory://NAME` share queues."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._name = urlsplit(url).netloc or "default"
        self._hub: _Hub | None = None
        self._consumers: set[_Consumer] = set()

    @property
    def hub(self) -> _Hub:
        if self._hub is None:
            raise BrokerConnectionError(
                f"broker {redact_url(self.url)} is not connected; call connect() first"
            )
        return self._hub

    async def connect(self) -> None:
        self._hub = _hubs.setdefault(self._name, _Hub())

    async def close(self) -> None:
        if self._hub is None:
            return
        for consumer in list(self._consumers):
            consumer.detach()
        for name, queue in list(self._hub.queues.items()):
            if queue.owner is self:
                del self._hub.queues[name]
        for listeners in self._hub.topics.values():
            listeners[:] = [q for q in listeners if q.owner is not self]
        self._hub = None

    async def _declare(self, topology: Topology) -> None:
        hub = self.hub
        dlq = topology.dead_letter_queue
        hub.queues.setdefault(dlq, _Queue(dlq, None, None))
        for family in ("requests", "tools"):
            for name in topology.queues(family):
                hub.queues.setdefault(name, _Queue(name, None, dlq))

    async def declare_reply_queue(
        self, name: str, *, durable: bool = False, expires: float | None = None
    ) -> None:
        self.hub.queues.setdefault(name, _Queue(name, None if durable else self, None))

    async def delete_queue(self, name: str) -> None:
        queue = self.hub.queues.pop(name, None)
        for consumer in list(queue.consumers) if queue else ():
            consumer.detach()

    async def _publish(self, queue: str, body: bytes) -> None:
        hub = self.hub
        hub.queue(queue).put(_Message(body, next(hub.seq)))

    async def consume(self, queue: str, *, prefetch: int = 32) -> Subscription:
        consumer = _Consumer(self.hub, self.hub.queue(queue), prefetch)
        self._consumers.add(consumer)
        return consumer

    async def stats(self, queue: str) -> QueueStats:
        q = self.hub.queue(queue)
        unacked = sum(len(c.unacked) for c in q.consumers)
        active = f"consumer-{id(q.consumers[0]):x}" if q.consumers else None
        return QueueStats(queue, len(q.ready), unacked, len(q.consumers), active)

    async def get(self, queue: str) -> Delivery | None:
        q = self.hub.queue(queue)
        if not q.ready:
            return None
        # A one-shot consumer at the back of the line, so an active consumer keeps its place.
        consumer = _Consumer.__new__(_Consumer)
        consumer.hub, consumer.queue, consumer.prefetch = self.hub, q, 1
        consumer.unacked, consumer.closed = {}, True
        message = q.ready.popleft()
        message.delivery_count += 1
        consumer.unacked[message.seq] = message
        return _OneShotDelivery(consumer, message)

    async def broadcast(self, topic: str, body: bytes) -> None:
        hub = self.hub
        for queue in hub.topics.get(topic, ()):
            queue.put(_Message(body, next(hub.seq)))

    async def listen(self, topic: str) -> Subscription:
        queue = _Queue(f"{topic}-listener-{id(self):x}-{next(self.hub.seq)}", self, None)
        self.hub.topics.setdefault(topic, []).append(queue)
        consumer = _Consumer(self.hub, queue, prefetch=1_000_000)
        self._consumers.add(consumer)
        return consumer


class _OneShotDelivery(_MemoryDelivery):
    async def nack(self, *, requeue: bool = True) -> None:
        message = self._settle()
        if requeue:
            self._consumer.queue.give_back([message])


def reset_memory_brokers() -> None:
    """Forget every in-process queue (tests use unique names instead where they can)."""
    _hubs.clear()


__all__ = ["MemoryBroker", "reset_memory_brokers"]
