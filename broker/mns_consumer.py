"""The consuming side of the MNS broker: subscriptions that long-poll, and their deliveries.

A subscription polls only while it is first in line for its queue and has room in its prefetch
window; what one poll returns is buffered and handed out in order. Closing it waits for a poll
in flight (at most the long-poll wait), then makes everything it holds visible again in the
order it was received, so the next consumer sees the partition in order.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

import anyio
from mns.mns_exception import MNSServerException

from agentqueue.broker.base import Delivery, Subscription
from agentqueue.broker.errors import BrokerConnectionError, BrokerError
from agentqueue.broker.mns_body import from_wire

if TYPE_CHECKING:
    from agentqueue.broker.mns import MNSBroker

log = logging.getLogger("agentqueue.broker.mns")

MAX_BATCH = 16  # MNS returns and deletes at most 16 messages per request
RELEASE_SECONDS = 1  # the shortest visibility timeout MNS accepts: "visible again now"
MAX_NACK_BACKOFF = 30
DELETE_TRIES = 6  # a delete meeting a dropped connection is tried again, over about 5 s


class MNSDelivery(Delivery):
    __slots__ = (
        "_subscription",
        "done",
        "handle",
        "lock",
        "message_id",
        "order",
        "settled",
        "visible_until",
    )

    def __init__(
        self,
        subscription: MNSSubscription,
        body: bytes,
        count: int,
        handle: str,
        visible_until: float,
        order: int,
        message_id: str | None = None,
    ) -> None:
        # MNS counts the receives itself (DequeueCount); a publisher cannot set it.
        super().__init__(body, subscription.queue, count, redelivered=count > 1)
        self.message_id = message_id or None  # MNS's MessageId: the same on every receive
        self._subscription = subscription
        self.handle = handle  # changes whenever the keep-alive extends the visibility
        self.visible_until = visible_until
        self.order = order
        self.lock = threading.Lock()  # held by threads that use or replace the handle
        self.done = False  # settled, as seen from the event loop
        self.settled = False  # settled, as seen by the keep-alive thread

    async def ack(self) -> None:
        await self._subscription.ack(self)

    async def nack(self, *, requeue: bool = True) -> None:
        await self._subscription.nack(self, requeue=requeue)


class MNSSubscription(Subscription):
    def __init__(self, broker: MNSBroker, queue: str, prefetch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.prefetch = max(1, prefetch)
        self.closed = False
        self._lock = threading.Lock()  # the poll thread adds to the two collections below
        self._outstanding: dict[int, MNSDelivery] = {}  # received and not settled, in order
        self._pending: deque[MNSDelivery] = deque()  # received and not yet handed out
        self._changed = anyio.Event()
        self._polling: anyio.Event | None = None
        self._to_delete: list[MNSDelivery] = []
        self._deleting = False
        self._deleted = anyio.Event()

    def notify(self) -> None:
        """Wake `__anext__`: room in the prefetch window, a turn in line, or closing."""
        self._changed.set()
        self._changed = anyio.Event()

    def held(self) -> list[MNSDelivery]:
        """Deliveries received and not settled (for the keep-alive)."""
        with self._lock:
            return list(self._outstanding.values())

    async def __anext__(self) -> Delivery:
        backoff = 0.2
        while True:
            changed = self._changed
            if self.closed:
                raise StopAsyncIteration
            with self._lock:
                if self._pending:
                    return self._pending.popleft()
                room = self.prefetch - len(self._outstanding)
            if room <= 0 or not self.broker.is_active(self):
                await changed.wait()
                continue
            try:
                await self._poll(min(MAX_BATCH, room))
                backoff = 0.2
            except BrokerConnectionError as exc:
                # Like a robust AMQP connection: keep trying until closed, say why meanwhile.
                log.warning(
                    "receiving from %s failed (%s); retrying in %.1f s", self.queue, exc, backoff
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _poll(self, count: int) -> None:
        done = self._polling = anyio.Event()
        try:
            await self.broker.call(self._receive_blocking, count, long=True)
        finally:
            self._polling = None
            done.set()

    def _receive_blocking(self, count: int) -> None:
        queue = self.broker.queue(self.queue)
        try:
            messages = queue.batch_receive_message(count, self.broker.endpoint.wait_seconds)
        except MNSServerException as exc:
            if exc.type == "MessageNotExist":
                return
            raise
        with self._lock:
            for m in messages:
                order = next(self.broker.order)
                delivery = MNSDelivery(
                    self,
                    from_wire(m.message_body),
                    m.dequeue_count,
                    m.receipt_handle,
                    float(m.next_visible_time) / 1000,
                    order,
                    m.message_id,
                )
                self._outstanding[order] = delivery
                self._pending.append(delivery)

    def _take(self, delivery: MNSDelivery) -> None:
        if delivery.done:
            raise BrokerError(
                f"delivery from {self.queue!r} was already settled or handed back"
                " (its consumer closed)"
            )
        delivery.done = True
        with self._lock:
            self._outstanding.pop(delivery.order, None)
        self.notify()

    async def ack(self, delivery: MNSDelivery) -> None:
        """Delete the message; acks waiting together go as one batch delete."""
        self._take(delivery)
        self._to_delete.append(delivery)
        while self._deleting:
            deleted = self._deleted
            await deleted.wait()
            if delivery not in self._to_delete:
                return
        self._deleting = True
        try:
            while self._to_delete:
                batch, self._to_delete = self._to_delete[:MAX_BATCH], self._to_delete[MAX_BATCH:]
                await self._delete(batch)
        finally:
            self._deleting = False
            deleted, self._deleted = self._deleted, anyio.Event()
            deleted.set()

    async def _delete(self, batch: list[MNSDelivery]) -> None:
        # A receipt handle stays good until the message's visibility runs out, so a delete
        # that met a dropped connection (MNS restarting, a stale keep-alive) is tried again.
        pause = 0.2
        for attempt in range(1, DELETE_TRIES + 1):
            try:
                await self.broker.call(self.broker.delete_blocking, self.queue, batch)
                return
            except BrokerConnectionError as exc:
                if attempt == DELETE_TRIES:
                    raise
                log.info("deleting from %s failed (%s); trying again", self.queue, exc)
                await anyio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def nack(self, delivery: MNSDelivery, *, requeue: bool) -> None:
        """Visible again after a backoff growing with its dequeue count, or dead-lettered."""
        self._take(delivery)
        if requeue:
            backoff = min(MAX_NACK_BACKOFF, 2 ** max(0, delivery.delivery_count - 1))
            await self.broker.call(self.broker.release_blocking, self.queue, [delivery], backoff)
            return
        await self.broker.reject(delivery)
        await self.broker.call(self.broker.delete_blocking, self.queue, [delivery])

    async def close(self, *, release: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        self.notify()
        with anyio.CancelScope(shield=True):
            if self._polling is not None:
                # Its messages are the queue's next ones: hand them back with the rest, in order.
                await self._polling.wait()
            with self._lock:
                held = list(self._outstanding.values())
                self._outstanding.clear()
                self._pending.clear()
            for delivery in held:
                delivery.done = True
            if release and held:
                try:
                    await self.broker.call(
                        self.broker.release_blocking, self.queue, held, RELEASE_SECONDS
                    )
                except BrokerError as exc:
                    log.warning(
                        "could not hand %d messages of %s back: %s", len(held), self.queue, exc
                    )
            self.broker.leave(self)
