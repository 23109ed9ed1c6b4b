"""`amqp://` and `amqps://`: RabbitMQ through aio-pika.

Topology, declared idempotently under the namespace:

- exchanges `<ns>-requests` and `<ns>-tools` (direct), routing on the partition index;
- per partition a durable quorum queue `<ns>-<family>-<p>` with `x-single-active-consumer`
  (one owner at a time, automatic fail-over), `x-delivery-limit` and a dead-letter exchange;
- `<ns>-dlx` (fanout) into `<ns>-dead-letters`, which holds our own dead-letter records (with
  reasons) and whatever RabbitMQ dead-letters by itself (delivery limit reached);
- reply queues: exclusive and auto-deleted per client, or durable per batch.

Every publish waits for the publisher confirm. Each consumer has its own channel, so its
prefetch is its own and closing it hands exactly its un-acked deliveries back; the acks of a
channel asked for in one turn of the event loop leave together (`rabbitmq_acks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aio_pika
import aio_pika.abc
import aiormq.exceptions
import anyio

from agentqueue.broker.base import Broker, Delivery, QueueStats, Subscription
from agentqueue.broker.errors import (
    BrokerConnectionError,
    BrokerError,
    QueueFull,
    QueueMissing,
    QueueUnavailable,
)
from agentqueue.broker.rabbitmq_acks import AckWindow
from agentqueue.broker.rabbitmq_nodes import connect_nodes, split_node_urls
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.broker.urls import redact_url

log = logging.getLogger("agentqueue.broker.rabbitmq")

PUBLISH_TIMEOUT = 30.0  # a publish not confirmed by then fails instead of hanging
RESUBSCRIBE_PAUSE = 1.0  # seconds between tries to consume a queue again after a reconnect
LISTEN_ATTEMPTS = 5  # declares of a listener's exchange, when it goes while binding to it


# A process-wide prefix and a counter: unique like a UUID per publish, without reading
# os.urandom (a system call) on every publish as uuid4 does.
_ID_PREFIX = uuid.uuid4().hex[:16]
_MESSAGE_IDS = (f"{_ID_PREFIX}-{n:x}" for n in itertools.count())


def _persistent() -> aiormq.spec.Basic.Properties:
    """Properties of one publish, never shared: aiormq writes a `message_id` into them and
    matches a Basic.Return to its publish by that id. Shared properties gave every publish the
    same id, so a returned reply matched none (aiormq logged "Unhandled message … returning"),
    or another's, and its publish was then confirmed as if delivered: the reply was lost."""
    return aiormq.spec.Basic.Properties(delivery_mode=2, message_id=next(_MESSAGE_IDS))


def _connection_errors(*more: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The errors of a lost connection or channel, and `more` (one tuple an `except` can take)."""
    return (
        *more,
        aiormq.exceptions.AMQPConnectionError,
        aiormq.exceptions.ChannelInvalidStateError,
        ConnectionError,
        OSError,
    )


class _RabbitDelivery(Delivery):
    __slots__ = ("_acks", "_message")

    def __init__(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        acks: AckWindow | None = None,
    ) -> None:
        redelivered = bool(message.redelivered)  # the AMQP flag: set by RabbitMQ alone
        # A quorum queue counts redeliveries in `x-delivery-count`, but a publisher can set that
        # header too: it may only count attempts (towards the delivery limit) of a message the
        # broker says it redelivered, and never marks a first delivery as a redelivery.
        count = (message.headers or {}).get("x-delivery-count") if redelivered else None
        if isinstance(count, int) and count >= 1:
            delivery_count = count + 1
        else:
            delivery_count = 2 if redelivered else 1
        super().__init__(message.body, queue, delivery_count, redelivered=redelivered)
        self._message = message
        # The acks of a consumer's channel go out together; a delivery taken with get() (or
        # auto-acked) settles alone.
        self._acks = acks
        if acks is not None:
            acks.delivered(self._tag)

    @property
    def _tag(self) -> int:
        tag = self._message.delivery_tag
        assert tag is not None, "a consumed delivery has a tag"
        return tag

    async def ack(self) -> None:
        try:
            if self._acks is not None:
                await self._acks.ack(self._tag)
            else:
                await self._message.ack()
        except _connection_errors() as exc:
            # The channel it came on is gone: RabbitMQ redelivers it, our dedup answers it.
            raise BrokerConnectionError(
                f"cannot ack a delivery from {self.queue!r}: {exc}"
            ) from exc

    async def nack(self, *, requeue: bool = True) -> None:
        try:
            if self._acks is not None:
                await self._acks.nack(self._tag, requeue=requeue)
            else:
                await self._message.nack(requeue=requeue)
        except _connection_errors() as exc:
            raise BrokerConnectionError(
                f"cannot nack a delivery from {self.queue!r}: {exc}"
            ) from exc


Declare = Callable[[aio_pika.abc.AbstractChannel], Awaitable[aio_pika.abc.AbstractQueue]]
"""Declares (or looks up) the queue a consumer reads, on its channel; run on every open."""


class _RabbitSubscription(Subscription):
    """A consumer on a channel of its own, which it opens again itself after a reconnect.

    The channel is a plain one, not aio-pika's robust channel, which would restore the consumer
    by itself, on its own schedule and out of our sight. Here one task, `_keep`, owned by the
    subscription, opens every channel after the first and ends when the subscription is
    closed: `close()` cancels its waits but lets an open under way finish (that open then sees
    `closed` and closes its channel), so no consumer outlives `close()`: with
    single-active-consumer, a consumer left open that nothing reads would own its partition,
    and the partition's events would wait for ever. Deliveries of a lost channel cannot be
    settled any more (their ack raises `BrokerConnectionError`); RabbitMQ delivers them again
    to the new consumer.
    """

    _no_ack = False  # a listener's deliveries need no ack

    def __init__(
        self,
        broker: RabbitMQBroker,
        subscriptions: _Subscriptions,
        queue: str,
        prefetch: int,
        declare: Declare,
    ) -> None:
        self.broker = broker
        self._subscriptions = subscriptions
        self.queue_name = queue
        self.prefetch = prefetch
        self._declare = declare
        self._inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None] = asyncio.Queue()
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._acks: AckWindow | None = None  # of the channel open now
        self._lost = anyio.Event()  # set when the channel closes or its consumer is cancelled
        self._waits = anyio.CancelScope()  # the keeper's waits, which close() cuts short
        self._keeper: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        await self._open()
        # A task of the subscription's own (awaited by close()): it must outlive consume().
        self._keeper = asyncio.create_task(self._keep(), name=f"keep consuming {self.queue_name}")

    async def _open(self) -> None:
        lost = self._lost = anyio.Event()
        channel = aio_pika.Channel(self.broker.connection, publisher_confirms=False)
        self._channel = channel
        channel.close_callbacks.add(lambda *_: lost.set())
        await channel.initialize()
        underlay = await channel.get_underlay_channel()
        # A consumer RabbitMQ cancels (its queue deleted or moved) counts as a lost channel.
        underlay.on_consumer_cancel_callbacks.add(lambda *_: lost.set())
        self._acks = AckWindow(underlay)
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await self._declare(channel)
        await queue.consume(self._inbox.put, no_ack=self._no_ack)
        if self.closed:  # closed while opening: what was opened must not stay
            await self._close_channel()

    async def _keep(self) -> None:
        """Open the channel again whenever it is lost, until the subscription is closed."""
        with self._waits:
            while True:
                await self._lost.wait()
                await self._close_channel()
                log.info("consumer of %s lost its channel; subscribing again", self.queue_name)
                await self._reopen()

    async def _reopen(self) -> None:
        """Consume again once connected, trying until it works; close() never cuts an open."""
        while True:
            await self.broker.connection.connected.wait()
            with anyio.CancelScope(shield=True):
                try:
                    await self._open()
                    return
                except _connection_errors(
                    asyncio.CancelledError, RuntimeError, aiormq.exceptions.AMQPError
                ) as exc:
                    # aiormq fails the operations of a connection that closes under them with
                    # a bare CancelledError; only our own cancellation ends the loop.
                    if isinstance(exc, asyncio.CancelledError) and _cancelling():
                        raise
                    # The queue may also be without a leader for a moment after a restart.
                    log.info("cannot consume %s again yet: %r", self.queue_name, exc)
                    await self._close_channel()
            await anyio.sleep(RESUBSCRIBE_PAUSE)

    async def __anext__(self) -> Delivery:
        if self.closed:
            raise StopAsyncIteration
        message = await self._inbox.get()
        if message is None:
            raise StopAsyncIteration
        acks = self._acks
        try:
            if acks is not None and message.channel is not acks.channel:
                acks = None
        except aiormq.exceptions.ChannelInvalidStateError:
            acks = None  # left in the inbox by a channel that is gone: its ack will say so
        return _RabbitDelivery(message, self.queue_name, acks)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._inbox.put_nowait(None)
        self._subscriptions.open.discard(self)
        self._waits.cancel()
        keeper = self._keeper
        if keeper is not None:
            # An open under way closes its own channel when it ends (it sees `closed`).
            await asyncio.wait([keeper], timeout=PUBLISH_TIMEOUT)
            keeper.cancel()
        # Closing the channel hands back exactly this consumer's un-acked deliveries.
        await self._close_channel()

    async def _close_channel(self) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        try:
            await channel.close()
        except _connection_errors(RuntimeError) as exc:
            log.debug("channel of %s closed with %s", self.queue_name, exc)


class _Subscriptions:
    """What a broker restores after a reconnect: its open consumers and its reply queues."""

    def __init__(self) -> None:
        self.open: set[_RabbitSubscription] = set()
        self.reply_queues: dict[str, tuple[bool, float | None]] = {}  # name -> durable, expires

    def declarer(self, queue: str) -> Declare:
        """How a consumer of `queue` finds it on each open of its channel."""

        async def declare(channel: aio_pika.abc.AbstractChannel) -> aio_pika.abc.AbstractQueue:
            declared = self.reply_queues.get(queue)
            if declared is None:
                return await channel.declare_queue(queue, passive=True)
            durable, expires = declared
            # Reply queues are declared again on every open: an exclusive one dies with the
            # connection, and its replies must find it again after a reconnect.
            return await channel.declare_queue(
                queue,
                durable=durable,
                exclusive=not durable,
                auto_delete=not durable,
                arguments=_reply_queue_arguments(durable, expires),
            )

        return declare

    async def close(self) -> None:
        """Close every open consumer, handing its un-acked deliveries back."""
        for subscription in list(self.open):
            await subscription.close()


class RabbitMQBroker(Broker):
    """RabbitMQ over one robust connection: confirmed publishes, a channel per consumer."""

    def __init__(self, url: str, *, publish_timeout: float = PUBLISH_TIMEOUT) -> None:
        self.url = url
        self.publish_timeout = publish_timeout
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._publisher: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}
        self._topology: Topology | None = None
        self._subscriptions = _Subscriptions()
        self._routes: dict[str, tuple[str, str, bool]] = {}

    @property
    def connection(self) -> aio_pika.abc.AbstractRobustConnection:
        if self._connection is None:
            raise BrokerConnectionError(
                f"broker {redact_url(self.url)} is not connected; call connect() first"
            )
        return self._connection

    async def connect(self) -> None:
        if self._connection is not None:
            return
        # A comma-separated list names the nodes of a cluster: connect to one, fail over to
        # the rest.
        nodes = [_split_tls(node) for node in split_node_urls(self.url)]
        ssl_context = nodes[0][1]
        try:
            with anyio.fail_after(30):
                self._connection = await connect_nodes(
                    [url for url, _ in nodes], ssl_context=ssl_context
                )
            self._publisher = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._connection.reconnect_callbacks.add(self._count_reconnect)
        except _connection_errors(TimeoutError) as exc:
            self._connection = None
            raise BrokerConnectionError(
                f"cannot connect to RabbitMQ at {redact_url(self.url)}: {exc}"
            ) from exc

    def _count_reconnect(self, *_: object) -> None:
        self.reconnects += 1

    async def close(self) -> None:
        await self._subscriptions.close()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def _declare(self, topology: Topology) -> None:
        channel = await self.connection.channel()
        old_limits: list[str] = []
        try:
            dlx = await channel.declare_exchange(
                f"{topology.namespace}-dlx", aio_pika.ExchangeType.FANOUT, durable=True
            )
            dead = await channel.declare_queue(
                topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            await dead.bind(dlx)
            for family in (REQUESTS, TOOLS):
                exchange: aio_pika.abc.AbstractExchange = await channel.declare_exchange(
                    f"{topology.namespace}-{family}", aio_pika.ExchangeType.DIRECT, durable=True
                )
                for p in topology.declaration_order(family):
                    name = topology.queue(family, p)
                    try:
                        queue = await channel.declare_queue(
                            name, durable=True, arguments=_partition_arguments(topology)
                        )
                    except aiormq.exceptions.ChannelPreconditionFailed as exc:
                        if "x-delivery-limit" not in str(exc):
                            raise
                        # Declared by an older version with a lower limit: used as it is, said
                        # loudly below (the failed declare closed the channel: open another).
                        old_limits.append(name)
                        channel = await self.connection.channel()
                        exchange = await channel.get_exchange(exchange.name, ensure=False)
                        queue = await channel.declare_queue(name, passive=True)
                    await queue.bind(exchange, routing_key=str(p))
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"queues of namespace {topology.namespace!r} exist with other settings: {exc};"
                " use a new namespace or delete the old queues"
            ) from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        if old_limits:
            log.warning(
                "%d partition queues of namespace %r (%s, …) were declared with an older, lower"
                " x-delivery-limit: there a healthy event redelivered that often by worker deaths"
                " alone is dead-lettered. Drain and delete them, then start a worker, to get the"
                " crash-loop guard of %d",
                len(old_limits),
                topology.namespace,
                old_limits[0],
                topology.broker_delivery_limit,
            )
        self._topology = topology
        assert self._publisher is not None
        for family in (REQUESTS, TOOLS):
            self._exchanges[family] = await self._publisher.get_exchange(
                f"{topology.namespace}-{family}", ensure=False
            )
        self._routes.clear()

    async def declare_reply_queue(
        self, name: str, *, durable: bool = False, expires: float | None = None
    ) -> None:
        self._subscriptions.reply_queues[name] = (durable, expires)
        channel = await self.connection.channel()
        try:
            await channel.declare_queue(
                name,
                durable=durable,
                exclusive=not durable,
                auto_delete=not durable,
                arguments=_reply_queue_arguments(durable, expires),
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"reply queue {name!r} exists with other settings ({exc}); durable reply queues"
                " are quorum queues: delete the old queue or use another name"
            ) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def delete_queue(self, name: str) -> None:
        channel = await self.connection.channel()
        try:
            await channel.queue_delete(name)
        finally:
            await channel.close()

    async def _publish(self, queue: str, body: bytes) -> None:
        assert self._publisher is not None, "connect() first"
        route = self._routes.get(queue)
        if route is None:
            route = self._routes[queue] = self._route(queue)
        exchange, routing_key, mandatory = route
        try:
            # asyncio's own timeout: a fraction of the cost of a cancel scope, on every publish.
            async with asyncio.timeout(self.publish_timeout):
                # aiormq's channel directly: aio-pika's Message wrapper costs more than the
                # frame itself on this path. Nacks and returns still raise (confirms are on).
                channel = await self._publisher.get_underlay_channel()
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=_persistent(),
                    mandatory=mandatory,
                )
        except TimeoutError:
            raise BrokerConnectionError(
                f"publish to {queue!r} was not confirmed within {self.publish_timeout:.0f} s"
                f" (RabbitMQ at {redact_url(self.url)} unreachable?)"
            ) from None
        except aio_pika.exceptions.PublishError as exc:  # returned: a DeliveryError too
            raise QueueMissing(
                f"queue {queue!r} does not exist (RabbitMQ could not route the message);"
                " declare the topology first, or the reply queue's owner is gone"
            ) from exc
        except aio_pika.exceptions.DeliveryError as exc:  # nacked
            limited = exchange != "" and self._topology and self._topology.max_length
            if limited:  # a partition queue with x-max-length and reject-publish
                raise QueueFull(
                    f"queue {queue!r} is full: RabbitMQ refused the message (x-max-length"
                    " reached); retry later or add workers"
                ) from exc
            # A queue with no length limit nacks when it cannot take the message now: a
            # replicated queue whose leader is on a node that just went down.
            raise QueueUnavailable(
                f"RabbitMQ refused the message for {queue!r} for now (the queue is without a"
                " leader, e.g. while a cluster node is down); publish it again"
            ) from exc
        except _connection_errors() as exc:
            raise BrokerConnectionError(f"cannot publish to {queue!r}: {exc}") from exc

    def _route(self, queue: str) -> tuple[str, str, bool]:
        """(exchange, routing key, mandatory): partitions through their family's exchange,
        replies by name through the default exchange. Always mandatory: a message no queue
        takes is returned (QueueMissing), not dropped."""
        partition = self._topology.partition_of(queue) if self._topology else None
        if partition is not None:
            family, p = partition
            return self._exchanges[family].name, str(p), True
        return "", queue, True

    async def consume(self, queue: str, *, prefetch: int = 32) -> Subscription:
        declare = self._subscriptions.declarer(queue)
        subscription = _RabbitSubscription(self, self._subscriptions, queue, prefetch, declare)
        try:
            await subscription.start()
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BrokerError(
                f"queue {queue!r} does not exist; declare the topology first"
            ) from exc
        except _connection_errors(asyncio.CancelledError, RuntimeError) as exc:
            # aiormq fails operations of a connection that closes under them with a bare
            # CancelledError; only a cancellation of this task itself must go on as one.
            if isinstance(exc, asyncio.CancelledError) and _cancelling():
                raise
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await subscription.close()
            raise BrokerConnectionError(f"cannot subscribe to {queue!r}: {exc!r}") from exc
        self._subscriptions.open.add(subscription)
        return subscription

    async def stats(self, queue: str) -> QueueStats:
        channel = await self.connection.channel()
        try:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                # Passive: looking must never create a queue (a typo would make a new set).
                raise QueueMissing(f"queue {queue!r} does not exist") from None
            result = declared.declaration_result
            return QueueStats(queue, result.message_count or 0, None, result.consumer_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def broadcast(self, topic: str, body: bytes) -> None:
        assert self._publisher is not None, "connect() first"
        try:
            with anyio.fail_after(self.publish_timeout):
                # Declared every time (broadcasts are heartbeats, seconds apart): the exchange
                # is deleted with its last listener, and a publish to a missing exchange would
                # close the channel every reply is published on.
                exchange = await self._publisher.declare_exchange(
                    topic, aio_pika.ExchangeType.FANOUT, auto_delete=True
                )
                await exchange.publish(aio_pika.Message(body), routing_key="", mandatory=False)
        except _connection_errors(TimeoutError) as exc:
            raise BrokerConnectionError(f"cannot broadcast on {topic!r}: {exc}") from exc

    async def listen(self, topic: str) -> Subscription:
        subscription = _ListenSubscription(self, self._subscriptions, topic)
        await subscription.start()
        self._subscriptions.open.add(subscription)
        return subscription

    async def get(self, queue: str) -> Delivery | None:
        # A channel of its own that lives until the message is settled.
        channel = await self.connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        message = await q.get(no_ack=False, fail=False)
        if message is None:
            await channel.close()
            return None
        return _OwnedChannelDelivery(message, queue, channel)


class _OwnedChannelDelivery(_RabbitDelivery):
    __slots__ = ("_channel",)

    def __init__(
        self,
        message: aio_pika.abc.AbstractIncomingMessage,
        queue: str,
        channel: aio_pika.abc.AbstractChannel,
    ) -> None:
        super().__init__(message, queue)
        self._channel = channel

    async def ack(self) -> None:
        await super().ack()
        await self._channel.close()

    async def nack(self, *, requeue: bool = True) -> None:
        await super().nack(requeue=requeue)
        await self._channel.close()


class _ListenSubscription(_RabbitSubscription):
    """A transient, exclusive queue bound to a fanout exchange (a new one after a reconnect)."""

    _no_ack = True

    def __init__(self, broker: RabbitMQBroker, subscriptions: _Subscriptions, topic: str) -> None:
        super().__init__(broker, subscriptions, "", 1000, self._declare_listener)
        self.topic = topic

    async def start(self) -> None:
        # The exchange is deleted with its last binding: if the last other listener's queue
        # goes (its worker killed) between our declare and our bind, the bind finds no
        # exchange. Declaring it again, on a new channel, makes it anew.
        for attempt in range(1, LISTEN_ATTEMPTS + 1):
            try:
                await super().start()
                return
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                await self._close_channel()
                if attempt == LISTEN_ATTEMPTS:
                    raise BrokerError(f"cannot listen on {self.topic!r}: {exc}") from exc
                log.info("the %r exchange went while binding to it; declaring it again", self.topic)

    async def _declare_listener(
        self, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractQueue:
        exchange = await channel.declare_exchange(
            self.topic, aio_pika.ExchangeType.FANOUT, auto_delete=True
        )
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        self.queue_name = queue.name
        await queue.bind(exchange)
        return queue

    async def __anext__(self) -> Delivery:
        if self.closed:
            raise StopAsyncIteration
        message = await self._inbox.get()
        if message is None:
            raise StopAsyncIteration
        return _AutoAckedDelivery(message, self.topic)


class _AutoAckedDelivery(_RabbitDelivery):
    async def ack(self) -> None:
        return None

    async def nack(self, *, requeue: bool = True) -> None:
        return None


def _cancelling() -> bool:
    """True when the current task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _reply_queue_arguments(durable: bool, expires: float | None) -> dict[str, Any] | None:
    # A durable reply queue must outlive a cluster node, so it is replicated (quorum): a
    # classic queue lives on one node, and replies sent while that node is down are dropped.
    if not durable:
        return None
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if expires is not None:
        arguments["x-expires"] = max(1, int(expires * 1000))  # unused that long: deleted
    return arguments


def _partition_arguments(topology: Topology) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-delivery-limit": topology.broker_delivery_limit,
        "x-dead-letter-exchange": f"{topology.namespace}-dlx",
    }
    if topology.max_length is not None:
        # A full queue nacks the publish (the caller gets QueueFull) instead of dropping the head.
        arguments["x-max-length"] = topology.max_length
        arguments["x-overflow"] = "reject-publish"
    return arguments


def _split_tls(url: str) -> tuple[str, ssl.SSLContext | None]:
    """amqps:// URLs may carry `?cafile=...`: build the TLS context from it."""
    parts = urlsplit(url)
    if parts.scheme != "amqps":
        return url, None
    query = parse_qs(parts.query)
    cafile = query.get("cafile", [None])[0]
    context = ssl.create_default_context(cafile=cafile)
    rest = "&".join(f"{k}={v}" for k, values in query.items() if k != "cafile" for v in values)
    return parts._replace(query=rest).geturl(), context
