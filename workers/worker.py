"""The worker runtime: consume partitions, route events into session lanes, shut down cleanly.

Reads top to bottom: `run` subscribes to the partitions this worker serves, every delivery is
decoded once and handed to its session's lane, each lane runs `EventProcessor.process`, and
`stop` (SIGTERM) stops taking events, lets running ones finish within a grace period, hands
queued ones back to the broker and closes the subscriptions.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Literal

import anyio
import anyio.abc
import msgspec

from agentqueue.broker.base import Broker, Delivery, Subscription
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.protocol.codec import DEFAULT_MAX_SIZE, decode, encode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import (
    AgentRequest,
    Cancel,
    Envelope,
    ResultEvent,
    ToolCall,
)
from agentqueue.workers.agent_handler import AgentHandler
from agentqueue.workers.app import App
from agentqueue.workers.processing import EventProcessor, Handler
from agentqueue.workers.remote_tools import RemoteTools
from agentqueue.workers.retry import RetryPolicy
from agentqueue.workers.session_lane import SessionLanes
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.tool_handler import ToolHandler

log = logging.getLogger("agentqueue.worker")

Role = Literal["agents", "tools", "all"]


class _Addressing(msgspec.Struct):
    """The fields needed to answer an envelope that failed to decode, read leniently."""

    id: str | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None


_addressing = msgspec.json.Decoder(_Addressing)


class _DeliverySettler:
    __slots__ = ("broker", "delivery", "envelope", "topology")

    def __init__(self, broker: Broker, topology: Topology, delivery: Delivery, envelope: Envelope | None) -> None:
        self.broker, self.topology = broker, topology
        self.delivery, self.envelope = delivery, envelope

    async def ack(self) -> None:
        await self.delivery.ack()

    async def hand_back(self) -> None:
        await self.delivery.nack(requeue=True)

    async def dead_letter(self, reason: str) -> None:
        env = self.envelope
        await self.broker.dead_letter(
            self.delivery,
            reason,
            self.topology,
            envelope_id=env.id if env else None,
            session_id=env.session_id if env else None,
        )


class Worker:
    """Serves the agents and/or tools of an `App` from the partitions it is given."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        store: SessionStore,
        *,
        topology: Topology | None = None,
        role: Role = "all",
        partitions: Sequence[int] | None = None,
        tool_partitions: Sequence[int] | None = None,
        concurrency: int = 32,
        retry: RetryPolicy | None = None,
        lease_ttl: float = 30.0,
        shutdown_grace: float = 30.0,
        max_message_size: int = DEFAULT_MAX_SIZE,
        tracing: bool = False,
        worker_id: str | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.store = store
        self.topology = topology or Topology()
        self.role = role
        self.partitions = list(range(self.topology.partitions)) if partitions is None else list(partitions)
        self.tool_partitions = (
            list(range(self.topology.tool_partitions)) if tool_partitions is None else list(tool_partitions)
        )
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self.max_message_size = max_message_size
        self.tracing = tracing
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.handled = 0
        self.dead_lettered = 0
        self._retry = retry
        self._lease_ttl = lease_ttl
        self._stop = anyio.Event()
        self._started = anyio.Event()
        self._subscriptions: list[Subscription] = []
        self._lanes: SessionLanes | None = None
        self.processor: EventProcessor | None = None

    def queues(self) -> list[str]:
        """The partition queues this worker consumes, by its role."""
        queues: list[str] = []
        if self.role in ("agents", "all"):
            queues += [self.topology.queue(REQUESTS, p) for p in self.partitions]
        if self.role in ("tools", "all"):
            queues += [self.topology.queue(TOOLS, p) for p in self.tool_partitions]
        return queues

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe to call from a signal handler)."""
        self._stop.set()

    async def wait_started(self) -> None:
        """Return once the worker is subscribed to all of its queues."""
        await self._started.wait()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until `stop()`; then finish or hand back in-flight events and return."""
        await self.broker.declare(self.topology)
        reply_queue = self.topology.reply_queue(f"worker-{self.worker_id}")
        await self.broker.declare_reply_queue(reply_queue)
        router = ReplyRouter(self.broker, reply_queue)
        handlers: dict[type, Handler] = {}
        if self.role in ("agents", "all"):
            remote = RemoteTools(self.broker, self.topology, router)
            handlers[AgentRequest] = AgentHandler(self.app, remote, tracing=self.tracing, worker_name=self.worker_id)
        if self.role in ("tools", "all"):
            handlers[ToolCall] = ToolHandler(self.app, worker_name=self.worker_id)
        self.processor = EventProcessor(
            self.broker,
            self.store,
            handlers,
            worker_id=self.worker_id,
            retry=self._retry,
            lease_ttl=self._lease_ttl,
            delivery_limit=self.topology.delivery_limit,
        )
        async with anyio.create_task_group() as tg:
            self._lanes = SessionLanes(tg, self.concurrency)
            await tg.start(router.run)
            with anyio.CancelScope() as consuming:
                async with anyio.create_task_group() as consumers:
                    for queue in self.queues():
                        await consumers.start(self._consume, queue)
                    self._started.set()
                    task_status.started()
                    log.info("worker %s serving %d queues", self.worker_id, len(self._subscriptions))
                    await self._stop.wait()
                    consuming.cancel()
            await self._drain()
            tg.cancel_scope.cancel()

    async def _drain(self) -> None:
        assert self.processor is not None and self._lanes is not None
        self.processor.accepting = False  # queued jobs now hand their events back
        with anyio.move_on_after(self.shutdown_grace) as scope:
            await self._lanes.wait_idle()
        if scope.cancelled_caught:
            log.warning("shutdown grace of %.0f s ran out; unfinished events go back to the broker", self.shutdown_grace)
        with anyio.CancelScope(shield=True):
            for subscription in self._subscriptions:
                await subscription.close()

    async def _consume(self, queue: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        subscription = await self.broker.consume(queue, prefetch=self.concurrency)
        self._subscriptions.append(subscription)
        task_status.started()
        async for delivery in subscription:
            await self._accept(delivery)

    async def _accept(self, delivery: Delivery) -> None:
        assert self._lanes is not None and self.processor is not None
        try:
            envelope = decode(delivery.body, max_size=self.max_message_size)
        except ProtocolError as exc:
            reason = str(exc)
            self._lanes.submit("\0undecodable", lambda: self._refuse(delivery, reason))
            return
        body = envelope.body
        if isinstance(body, Cancel):
            found = self.processor.cancel(body.request_id)
            log.info("cancel of %s (%s)", body.request_id, "running" if found else "not running yet")
            await delivery.ack()
            return

        async def job() -> None:
            assert self.processor is not None
            settler = _DeliverySettler(self.broker, self.topology, delivery, envelope)
            if not self.processor.accepting:
                await settler.hand_back()
                return
            await self.processor.process(envelope, settler, delivery.delivery_count)
            self.handled += 1

        self._lanes.submit(self.processor.lane_key(envelope), job)

    async def _refuse(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter bytes that are not a valid envelope and tell the caller if we can."""
        self.dead_lettered += 1
        log.error("dead-lettering undecodable message on %s: %s", delivery.queue, reason)
        try:
            address = _addressing.decode(delivery.body)
        except (msgspec.MsgspecError, RecursionError):
            address = _Addressing()
        await self.broker.dead_letter(
            delivery, reason, self.topology, envelope_id=address.id, session_id=address.session_id
        )
        if address.reply_to and address.id:
            reply = Envelope(
                id=new_id(),
                session_id=address.session_id or "",
                correlation_id=address.correlation_id or address.id,
                body=ResultEvent(request_id=address.id, kind="failed", error=reason),
                created_at=time.time(),
            )
            await self.broker.publish(address.reply_to, encode(reply))
