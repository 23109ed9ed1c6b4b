"""`mns://` and `mnss://`: Alibaba Cloud MNS queues through the (synchronous) aliyun-mns-sdk.

Every SDK call runs in a worker thread, never on the event loop: long polls under a limiter sized
to the subscriptions (each holds one thread while it waits), everything else under a separate
limiter, so a send never queues behind a poll. An SDK `Account` holds one HTTP connection and is
not thread-safe, so each thread has its own.

- Queues: `declare` creates the partition queues and the dead-letter queue (CreateQueue is
  idempotent); reply queues are ordinary queues, deleted on close unless durable.
- Publish: one SendMessage per envelope, confirmed by its response. Bodies are sent as described
  in `mns_body` (JSON as text, other bytes as base64); one over 64 KB is refused before sending.
- Consume: long-poll batch receive. A delivery carries its receipt handle and `DequeueCount`;
  ack = delete (acks that arrive together go as one batch delete); nack = make it visible
  again after a short backoff. While a delivery is held, a keep-alive thread extends its
  visibility, so a long agent turn is not redelivered under its feet.
- Ordering: MNS has no single-active-consumer. Within one broker connection the first
  subscription of a queue is the active one and the next takes over when it closes, as on the
  other brokers; across processes nothing stops two consumers of a queue, so ordering per
  partition relies on one consumer per partition queue (on Function Compute: one trigger per
  queue with delivery concurrency 1; locally: the worker that serves the partition). Whatever
  happens, the session store's fenced lease keeps two consumers from both running a session.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from mns.account import Account
from mns.mns_exception import MNSClientException, MNSClientNetworkException, MNSServerException
from mns.queue import Message, Queue, QueueMeta

from agentqueue.broker.base import Broker, Delivery, QueueStats, Subscription
from agentqueue.broker.errors import (
    BrokerConnectionError,
    BrokerError,
    MessageTooLarge,
    QueueMissing,
)
from agentqueue.broker.mns_body import MAX_BODY_BYTES, from_wire, to_wire
from agentqueue.broker.mns_config import Credentials, load_credentials, parse_mns_url
from agentqueue.broker.mns_consumer import MNSDelivery, MNSSubscription
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.broker.urls import redact_url
from agentqueue.protocol.codec import encode_dead_letter
from agentqueue.protocol.messages import DeadLetter

log = logging.getLogger("agentqueue.broker.mns")

T = TypeVar("T")
_AUTH_ERRORS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "TimeExpired"}
_STALE = {"MessageNotExist", "ReceiptHandleError"}
_PARTITION_QUEUE = re.compile(r"^(?P<ns>.+)-(?:requests|tools)-\d+$")


class MNSBroker(Broker):
    """Alibaba Cloud MNS (or a local MNS-compatible server); see the module docs."""

    max_message_size = MAX_BODY_BYTES
    max_delay = 7 * 24 * 3600.0  # DelaySeconds: MNS holds a message back up to 7 days

    def __init__(self, url: str, *, credentials: Credentials | None = None) -> None:
        self.url = url
        self.endpoint = parse_mns_url(url)
        self.order = itertools.count()
        self._given_credentials = credentials  # else read from the environment on connect
        self._credentials: Credentials | None = None
        self._local = threading.local()
        self._accounts: weakref.WeakSet[Account] = weakref.WeakSet()
        self._short = anyio.CapacityLimiter(self.endpoint.threads)
        self._long = anyio.CapacityLimiter(1)
        self._lines: dict[str, list[MNSSubscription]] = {}
        self._dead_letters: dict[str, str] = {}
        self._owned_replies: set[str] = set()
        self._stop = threading.Event()
        self._keep_alive: threading.Thread | None = None

    # ------------------------------------------------------------------ threads and SDK calls

    def _account(self) -> Account:
        account = getattr(self._local, "account", None)
        if account is None:
            c = self._credentials
            assert c is not None, "connect() first"
            account = Account(
                self.endpoint.host, c.access_key_id, c.access_key_secret, c.security_token
            )
            self._local.account = account
            self._accounts.add(account)
        return account

    def queue(self, name: str) -> Queue:
        """This thread's SDK handle on a queue; bodies are encoded by `mns_body`, not the SDK."""
        queue = self._account().get_queue(name)
        queue.set_encoding(False)
        return queue

    async def call(self, fn: Callable[..., T], *args: Any, long: bool = False) -> T:
        """Run a blocking SDK call in a worker thread, translating the SDK's errors."""
        if self._credentials is None:
            raise BrokerConnectionError(
                f"broker {redact_url(self.url)} is not connected; call connect() first"
            )
        try:
            return await anyio.to_thread.run_sync(
                fn, *args, limiter=self._long if long else self._short
            )
        except MNSClientNetworkException as exc:
            raise BrokerConnectionError(
                f"MNS at {self.endpoint.host} is unreachable: {exc.message}"
            ) from None
        except MNSServerException as exc:
            raise self._server_error(exc) from None
        except MNSClientException as exc:
            raise BrokerError(f"MNS refused the request: {exc.type}: {exc.message}") from None

    def _server_error(self, exc: MNSServerException) -> BrokerError:
        if exc.type == "QueueNotExist":
            return QueueMissing(
                f"MNS queue does not exist ({exc.message}); declare the topology first"
            )
        if exc.type in _AUTH_ERRORS:
            return BrokerConnectionError(
                f"MNS at {self.endpoint.host} refused the credentials ({exc.type}: {exc.message});"
                " check ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET and the clock"
            )
        return BrokerError(f"MNS error {exc.type}: {exc.message} (request {exc.request_id})")

    def delete_blocking(self, queue: str, deliveries: list[MNSDelivery]) -> None:
        """Delete messages by their current receipt handles (one request for up to 16)."""
        handles = []
        for delivery in deliveries:
            with delivery.lock:
                delivery.settled = True
                handles.append(delivery.handle)
        sdk = self.queue(queue)
        try:
            if len(handles) == 1:
                sdk.delete_message(handles[0])
            else:
                sdk.batch_delete_message(handles)
        except MNSServerException as exc:
            if exc.type not in _STALE and not exc.sub_errors:
                raise
            # Held past its visibility (e.g. the process stalled): MNS redelivers it and the
            # session store answers the redelivery from the stored result.
            log.warning(
                "ack on %s came too late for some messages (%s); they will be redelivered",
                queue,
                exc.type,
            )

    def release_blocking(self, queue: str, deliveries: list[MNSDelivery], seconds: int) -> None:
        """Make messages visible again after `seconds`, in the order given."""
        sdk = self.queue(queue)
        for delivery in deliveries:
            with delivery.lock:
                delivery.settled = True
                try:
                    sdk.change_message_visibility(delivery.handle, seconds)
                except MNSServerException as exc:
                    if exc.type not in _STALE:
                        raise

    async def reject(self, delivery: MNSDelivery) -> None:
        """Publish a delivery nacked without requeue to the dead letters of its namespace."""
        dlq = self._dead_letters.get(delivery.queue)
        match = _PARTITION_QUEUE.match(delivery.queue)
        if dlq is None and match is not None:
            dlq = f"{match['ns']}-dead-letters"
        if dlq is None:
            log.warning(
                "dropping a rejected message of %s: it has no dead-letter queue", delivery.queue
            )
            return
        record = DeadLetter(
            reason="rejected by its consumer (nack without requeue)",
            queue=delivery.queue,
            payload=delivery.body,
            failed_at=time.time(),
            attempts=delivery.delivery_count,
        )
        await self.publish(dlq, encode_dead_letter(record), sign=False)

    def _keep_alive_loop(self) -> None:
        # Extends what consumers hold once half its visibility has passed; a thread of its own
        # (with its own Account), so it runs however busy the event loop is.
        half = self.endpoint.visibility / 2
        while not self._stop.wait(min(1.0, half / 2)):
            try:
                subscriptions = [s for line in list(self._lines.values()) for s in list(line)]
                held = [d for s in subscriptions for d in s.held()]
            except RuntimeError:  # the loop changed the lines while we looked: look again
                continue
            for delivery in held:
                if delivery.visible_until - time.time() < half:
                    self._extend(delivery)

    def _extend(self, delivery: MNSDelivery) -> None:
        with delivery.lock:
            if delivery.settled:
                return
            try:
                reply = self.queue(delivery.queue).change_message_visibility(
                    delivery.handle, self.endpoint.visibility
                )
            except Exception as exc:  # the keep-alive must outlive any one failure
                log.warning("could not extend a message held from %s: %s", delivery.queue, exc)
                return
            delivery.handle = reply.receipt_handle
            delivery.visible_until = float(reply.next_visible_time) / 1000

    # ------------------------------------------------------------------ the Broker interface

    async def connect(self) -> None:
        if self._credentials is not None:
            return
        self._credentials = self._given_credentials or load_credentials()
        try:
            await self.call(lambda: self._account().list_queue(ret_number=1))
        except BrokerError as exc:
            self._credentials = None
            raise BrokerConnectionError(
                f"cannot connect to MNS broker {redact_url(self.url)}: {exc}"
            ) from None
        self._stop.clear()
        self._keep_alive = threading.Thread(
            target=self._keep_alive_loop, name="mns-keep-alive", daemon=True
        )
        self._keep_alive.start()

    async def close(self) -> None:
        if self._credentials is None:
            return
        for line in list(self._lines.values()):
            for subscription in list(line):
                await subscription.close()
        for name in sorted(self._owned_replies):
            try:
                await self.delete_queue(name)
            except BrokerError as exc:
                log.warning("could not delete reply queue %s: %s", name, exc)
        self._stop.set()
        if self._keep_alive is not None:
            await anyio.to_thread.run_sync(self._keep_alive.join)
            self._keep_alive = None
        for account in list(self._accounts):
            account.mns_client.http.conn.close()
        self._credentials = None

    async def _create(self, name: str) -> None:
        meta = QueueMeta(vis_timeout=self.endpoint.visibility, max_msg_size=MAX_BODY_BYTES)

        def create() -> None:
            try:
                self.queue(name).create(meta)
            except MNSServerException as exc:
                if exc.type != "QueueAlreadyExist":  # exists with other attributes: use it as is
                    raise

        await self.call(create)

    async def _declare(self, topology: Topology) -> None:
        names = [topology.dead_letter_queue, *topology.queues(REQUESTS), *topology.queues(TOOLS)]
        # Each family's last partition first, the rest side by side: see declaration_order.
        lasts = [topology.queue(f, topology.declaration_order(f)[0]) for f in (REQUESTS, TOOLS)]
        for name in lasts:
            await self._create(name)
        async with anyio.create_task_group() as tg:
            for name in names:
                if name not in lasts:
                    tg.start_soon(self._create, name)
        for name in names[1:]:
            self._dead_letters[name] = topology.dead_letter_queue

    async def declare_reply_queue(
        self, name: str, *, durable: bool = False, expires: float | None = None
    ) -> None:
        await self._create(name)
        if not durable:
            self._owned_replies.add(name)

    async def delete_queue(self, name: str) -> None:
        for subscription in list(self._lines.get(name, ())):
            await subscription.close(release=False)

        def delete() -> None:
            try:
                self.queue(name).delete()
            except MNSServerException as exc:
                if exc.type != "QueueNotExist":
                    raise

        await self.call(delete)
        self._owned_replies.discard(name)

    async def _publish(self, queue: str, body: bytes) -> None:
        await self._send(queue, body, None)

    async def _publish_delayed(self, queue: str, body: bytes, delay: float) -> None:
        # DelaySeconds is whole seconds: rounded up, so the message is never early.
        await self._send(queue, body, math.ceil(delay))

    async def _send(self, queue: str, body: bytes, delay_seconds: int | None) -> None:
        text = to_wire(body)
        size = len(text.encode("utf-8")) if text[:1] == "{" else len(text)
        if size > MAX_BODY_BYTES:
            form = "as text" if text[:1] == "{" else "after base64"
            raise MessageTooLarge(
                f"message for MNS queue {queue!r} is {size} bytes {form}, over MNS's limit of"
                f" {MAX_BODY_BYTES} bytes; send large inputs by reference (a URL) instead"
            )
        try:
            await self.call(lambda: self.queue(queue).send_message(Message(text, delay_seconds)))
        except QueueMissing:
            raise QueueMissing(
                f"queue {queue!r} does not exist in MNS; declare the topology first, or the"
                " reply queue's owner is gone"
            ) from None

    async def consume(self, queue: str, *, prefetch: int = 32) -> Subscription:
        await self.call(self._check_exists, queue)  # fail now, not in the first poll
        subscription = MNSSubscription(self, queue, prefetch)
        self._lines.setdefault(queue, []).append(subscription)
        self._long.total_tokens = max(1, sum(len(line) for line in self._lines.values()))
        return subscription

    def is_active(self, subscription: MNSSubscription) -> bool:
        """Whether it is first in line for its queue (the one that polls)."""
        line = self._lines.get(subscription.queue)
        return line is not None and bool(line) and line[0] is subscription

    def leave(self, subscription: MNSSubscription) -> None:
        """Take a closed subscription out of line; the next one in line becomes active."""
        line = self._lines.get(subscription.queue, [])
        if subscription in line:
            line.remove(subscription)
        if line:
            line[0].notify()
        else:
            self._lines.pop(subscription.queue, None)

    def _check_exists(self, queue: str) -> None:
        try:
            self.queue(queue).peek_message()
        except MNSServerException as exc:
            if exc.type != "MessageNotExist":
                raise

    def _counts(self, queue: str) -> tuple[int, int]:
        with warnings.catch_warnings():
            # The SDK marks the message counts deprecated, yet MNS returns them and they are
            # what `agentqueue status` shows.
            warnings.simplefilter("ignore", DeprecationWarning)
            meta = self.queue(queue).get_attributes()
            return int(meta.active_messages), int(meta.inactive_messages)

    async def stats(self, queue: str) -> QueueStats:
        ready, inflight = await self.call(self._counts, queue)
        line = self._lines.get(queue, [])
        active = f"consumer-{id(line[0]):x}" if line else None
        return QueueStats(queue, ready, inflight, len(line), active)

    async def get(self, queue: str) -> Delivery | None:
        subscription = MNSSubscription(self, queue, 1)

        def receive() -> Any:
            try:
                return self.queue(queue).receive_message(0)
            except MNSServerException as exc:
                if exc.type == "MessageNotExist":
                    return None
                raise

        m = await self.call(receive)
        if m is None:
            return None
        order = next(self.order)
        delivery = MNSDelivery(
            subscription,
            from_wire(m.message_body),
            m.dequeue_count,
            m.receipt_handle,
            float(m.next_visible_time) / 1000,
            order,
            m.message_id,
        )
        subscription._outstanding[order] = delivery
        return delivery


__all__ = ["MNSBroker"]
