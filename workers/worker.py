"""The worker runtime: consume partitions, route events into session lanes, shut down cleanly.

Reads top to bottom: `run` subscribes to the partitions this worker serves, every delivery is
decoded once and handed to its session's lane, each lane runs `EventProcessor.process`, and
`stop` (SIGTERM) stops taking events, lets running ones finish within a grace period, hands
queued ones back to the broker and closes the subscriptions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Literal

import anyio
import anyio.abc

from agentqueue.broker.base import Broker, Delivery, Subscription
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import REQUESTS, TOOLS
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import AgentRequest, Approval, Cancel, ToolCall
from agentqueue.workers import delayed, schedules, spans
from agentqueue.workers.agent_handler import AgentHandler, import_agentscope
from agentqueue.workers.app import App
from agentqueue.workers.assembly import assemble_pipeline
from agentqueue.workers.handling import Handler
from agentqueue.workers.membership import Membership, WorkerLoad, package_version
from agentqueue.workers.middleware import Metrics
from agentqueue.workers.models import ModelRuntime
from agentqueue.workers.pipeline import Event, Pipeline
from agentqueue.workers.remote_tools import RemoteTools
from agentqueue.workers.session_lane import SessionLanes
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.settings import Settings
from agentqueue.workers.timers import Timers, open_timer_store
from agentqueue.workers.tool_handler import ToolHandler

log = logging.getLogger("agentqueue.worker")

Role = Literal["agents", "tools", "all"]

_VERSION = package_version()


class _Consumer:
    """One subscribed partition queue: its events held and running, and its hand-back.

    A consumer serves, then releases (no job of it starts any more, the running ones finish),
    then is released (its subscription closed: the broker has every unsettled event back, in
    order). Every change of that state goes through the methods below.
    """

    __slots__ = ("_idle", "_released", "held", "queue", "releasing", "running", "scope",
                 "subscription")  # fmt: skip

    def __init__(self, queue: str, subscription: Subscription) -> None:
        self.queue = queue
        self.subscription = subscription
        self.scope = anyio.CancelScope()
        self.running = 0
        self.held = 0  # received and not settled yet: running or waiting in a session lane
        self.releasing = False
        self._idle = anyio.Event()
        self._released = anyio.Event()

    def hold(self) -> None:
        """A delivery of this queue waits in a session lane."""
        self.held += 1

    def start(self, *, accepting: bool = True) -> bool:
        """A held job starts: False (no longer held, left unsettled) once releasing, or when
        the worker is not `accepting` (shutting down)."""
        if self.releasing or not accepting:
            self.held -= 1
            return False
        self.running += 1
        return True

    def finish(self) -> None:
        """A started job has ended, its delivery settled or left for the hand-back."""
        self.running -= 1
        self.held -= 1
        if self.running == 0 and self.releasing:
            self._idle.set()

    def stop_starting(self) -> bool:
        """No job of this queue starts from now on; True if it was still serving."""
        if self.releasing:
            return False
        self.releasing = True
        return True

    async def release(self, *, wait: bool = True) -> None:
        """Stop consuming, let running jobs finish (`wait`), close: the rest goes back."""
        self.stop_starting()
        self.scope.cancel()
        if self.running and wait:
            await self._idle.wait()
        with anyio.CancelScope(shield=True):
            await self.subscription.close()

    def released(self) -> None:
        """The hand-back is complete: the queue may be taken again."""
        self._released.set()

    async def wait_released(self) -> None:
        """Return once the hand-back of this queue is complete."""
        await self._released.wait()


class _DeliverySettler:
    """Settles a broker delivery: ack, nack to requeue, or the dead-letter queue."""

    __slots__ = ("broker", "delivery", "topology", "worker")

    def __init__(self, worker: Worker, delivery: Delivery) -> None:
        self.worker, self.broker, self.topology = worker, worker.broker, worker.topology
        self.delivery = delivery

    async def ack(self) -> None:
        await self.delivery.ack()

    async def hand_back(self) -> None:
        await self.delivery.nack(requeue=True)

    async def dead_letter(
        self, reason: str, envelope_id: str | None, session_id: str | None
    ) -> None:
        self.worker.dead_lettered += 1
        await self.broker.dead_letter(
            self.delivery, reason, self.topology, envelope_id=envelope_id, session_id=session_id
        )


class Worker:
    """Serves the agents and/or tools of an `App` from the partitions it is given."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        store: SessionStore,
        settings: Settings | None = None,
        *,
        role: Role = "all",
        partitions: Sequence[int] | None = None,
        tool_partitions: Sequence[int] | None = None,
        tracing: bool | None = None,  # AgentScope's spans; None: on when a tracer provider is set
        worker_id: str | None = None,
    ) -> None:
        """A worker configured by `settings` (default: `Settings.load()`, the environment's)."""
        self.settings = settings = Settings.load() if settings is None else settings
        self.app = app
        self.broker = broker
        self.store = store
        self.topology = settings.topology
        self.role = role
        self.partitions = (
            list(range(self.topology.partitions)) if partitions is None else list(partitions)
        )
        self.tool_partitions = (
            list(range(self.topology.tool_partitions))
            if tool_partitions is None
            else list(tool_partitions)
        )
        self.concurrency = settings.concurrency
        self.tracing = tracing
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.handled = 0
        self.handled_by_queue: Counter[str] = Counter()
        self.dead_lettered = 0
        self._stop = anyio.Event()
        self._started = anyio.Event()
        self._consumers: dict[str, _Consumer] = {}
        self._leaving: dict[str, _Consumer] = {}  # queues being handed back
        self._lanes: SessionLanes | None = None  # agent requests (and refusals)
        self._tool_lanes: SessionLanes | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.membership: Membership | None = None
        self.pipeline: Pipeline | None = None
        # Delayed requests, schedules and whatever else waits: fired by whichever worker of
        # the namespace claims them first. Register more kinds on it before `run`.
        self.timers = Timers(
            open_timer_store(store.url, self.topology.namespace), owner=self.worker_id
        )
        self._metrics: Metrics | None = None  # the pipeline's, for the sessions it owns

    def queues(self) -> list[str]:
        """The partition queues this worker consumes, by its role."""
        queues: list[str] = []
        if self.role in ("agents", "all"):
            queues += [self.topology.queue(REQUESTS, p) for p in self.partitions]
        if self.role in ("tools", "all"):
            queues += [self.topology.queue(TOOLS, p) for p in self.tool_partitions]
        return queues

    @property
    def owned(self) -> list[str]:
        """The queues this worker is subscribed to right now."""
        return sorted(self._consumers)

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (safe to call from a signal handler)."""
        self._stop.set()

    async def wait_started(self) -> None:
        """Return once the worker is subscribed to all of its queues."""
        await self._started.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Worker]:
        """Serve in this process for the `async with` block (subscribed when it starts); on
        leaving it, stop gracefully: in-flight events finish or go back to the broker."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            finally:
                self.stop()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until `stop()`; then finish or hand back in-flight events and return."""
        await self.broker.declare(self.topology)
        reply_queue = self.topology.reply_queue(f"worker-{self.worker_id}")
        await self.broker.declare_reply_queue(reply_queue)
        router = ReplyRouter(self.broker, reply_queue)
        handlers: dict[type, Handler] = {}
        models: ModelRuntime | None = None
        if self.role in ("agents", "all"):
            await anyio.to_thread.run_sync(import_agentscope)
            remote = RemoteTools(self.broker, self.topology, router)
            tracing = spans.enabled() if self.tracing is None else self.tracing
            # Model rate limits and usage are shared through this worker's own store.
            models = ModelRuntime.from_env(
                namespace=self.topology.namespace, store_url=self.store.url
            )
            # One handler: a decision or a cancel resumes the session's paused turn.
            handlers[AgentRequest] = handlers[Approval] = handlers[Cancel] = AgentHandler(
                self.app,
                remote,
                tracing=tracing,
                worker_name=self.worker_id,
                models=models,
                approval_timeout=self.settings.approval_timeout,
            )
        if self.role in ("tools", "all"):
            handlers[ToolCall] = ToolHandler(self.app, worker_name=self.worker_id, store=self.store)
        # Streams are kept beside this worker's own store, where attachers look for them.
        stream_log = self.settings.open_stream_log(self.store.url)
        self.pipeline = assemble_pipeline(
            self.app,
            self.broker,
            self.store,
            handlers,
            self.settings,
            worker_id=self.worker_id,
            timers=self.timers,
            owned=self._consumers.keys,
            stream_log=stream_log,
        )
        delayed.register(self.timers, self.pipeline)
        schedules.register(
            self.timers,
            self.broker,
            self.topology,
            missed=self.settings.schedule_missed,
            grace=self.settings.schedule_grace,
        )
        self._metrics = next((m for m in self.pipeline.middleware if isinstance(m, Metrics)), None)
        try:
            await self._serve(router, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                if stream_log is not None:
                    await stream_log.close()
                if models is not None:
                    await models.aclose()  # the rate limit's connection to its store

    async def _serve(self, router: ReplyRouter, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            # Tool calls get lanes and a concurrency limit of their own: an agent turn waits for
            # its tool call while holding a slot, so with one shared limit a worker serving both
            # could fill every slot with waiting turns and starve the tools they wait for.
            self._lanes = SessionLanes(tg, self.concurrency)
            self._tool_lanes = SessionLanes(tg, self.concurrency)
            await tg.start(router.run)
            await tg.start(self.timers.run)
            for hook in self.app.starting:
                await hook(self.worker_id, self.role)
            if self.settings.balance:
                interval = self.settings.heartbeat_interval
                self.membership = Membership(
                    self.broker,
                    f"{self.topology.namespace}-control",
                    self.worker_id,
                    self._eligible(),
                    interval=interval,
                    expiry=interval * 3.5,
                    load=self.load,
                )
                await tg.start(self.membership.run)
                # Hear the peers that are already up before claiming partitions.
                await anyio.sleep(self.membership.interval * 1.5)
                target = self.membership.mine()
            else:
                target = set(self.queues())
            for queue in sorted(target):
                try:
                    await self._subscribe(queue)
                except BrokerConnectionError as exc:
                    if self.membership is None:
                        raise
                    log.warning("cannot take %s yet: %s", queue, exc)  # a later round will
            if self.membership is not None:
                # Only now: two tasks subscribing side by side could take one queue twice,
                # leaving a consumer that no release ever closes.
                tg.start_soon(self._rebalance, self.membership)
            self._started.set()
            task_status.started()
            log.info("worker %s serving %d queues", self.worker_id, len(self._consumers))
            await self._stop.wait()
            if self.membership is not None:
                with anyio.move_on_after(2):
                    await self.membership.announce(leaving=True)
            await self._drain()
            with anyio.CancelScope(shield=True):
                for hook in self.app.stopping:
                    await hook(self.worker_id, self.role)
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.timers.close()

    def load(self) -> WorkerLoad:
        """What this worker is doing now: role, version, events per queue, sessions owned."""
        metrics = self._metrics
        return WorkerLoad(
            role=self.role,
            version=_VERSION,
            in_flight={q: c.running for q, c in self._consumers.items() if c.running},
            unacked={q: c.held for q, c in self._consumers.items() if c.held},
            handled=dict(self.handled_by_queue),
            sessions=metrics.sessions_owned()[0] if metrics is not None else 0,
        )

    def _eligible(self) -> dict[str, list[str]]:
        eligible: dict[str, list[str]] = {}
        for queue in self.queues():
            family, _ = self.topology.partition_of(queue) or ("other", 0)
            eligible.setdefault(family, []).append(queue)
        return eligible

    async def _subscribe(self, queue: str) -> None:
        assert self._tg is not None
        leaving = self._leaving.get(queue)
        if leaving is not None:
            await leaving.wait_released()  # a hand-back of the same queue is still finishing
        if queue in self._consumers:
            raise RuntimeError(f"worker {self.worker_id} already consumes {queue}")
        subscription = await self.broker.consume(queue, prefetch=self.concurrency)
        consumer = self._consumers[queue] = _Consumer(queue, subscription)
        if self.membership is not None:
            self.membership.owned.add(queue)
        self._tg.start_soon(self._consume, consumer, name=f"consume {queue}")

    async def _consume(self, consumer: _Consumer) -> None:
        with consumer.scope:
            async for delivery in consumer.subscription:
                await self._accept(delivery, consumer)

    async def _release(self, queue: str, *, wait: bool = True) -> None:
        """Stop serving a queue: finish its running events, hand the rest back in order."""
        consumer = self._consumers.pop(queue, None)
        if consumer is None:
            return
        self._leaving[queue] = consumer
        await consumer.release(wait=wait)
        if self.membership is not None:
            self.membership.owned.discard(queue)
        del self._leaving[queue]
        consumer.released()
        log.info("worker %s handed %s over", self.worker_id, queue)

    async def _retake(self, queue: str) -> None:
        """Hand a queue back in order and subscribe to it again (balancing may pick a peer)."""
        await self._release(queue)
        while self.membership is None and not self._stop.is_set():
            try:
                await self._subscribe(queue)
                return
            except BrokerConnectionError as exc:
                log.warning("cannot take %s again yet: %s", queue, exc)
                await anyio.sleep(1.0)

    async def _rebalance(self, membership: Membership) -> None:
        assert self._tg is not None
        while True:
            with anyio.move_on_after(membership.interval):
                await membership.changed.wait()
            if self._stop.is_set():
                return
            target = membership.mine()
            for queue in sorted(set(self._consumers) - target):
                self._tg.start_soon(self._release, queue)
            for queue in sorted(target - set(self._consumers)):
                try:
                    await self._subscribe(queue)
                except BrokerConnectionError as exc:
                    # The broker is away (restarting): the next round, once the connection
                    # is back, subscribes again. Crashing here would drop running events.
                    log.warning("cannot take over %s yet: %s", queue, exc)
                    break

    async def _drain(self) -> None:
        assert self.pipeline is not None and self._lanes is not None
        self.pipeline.accepting = False  # jobs not started yet are left for the next owner
        for consumer in self._consumers.values():
            consumer.scope.cancel()
        grace = self.settings.shutdown_grace
        with anyio.move_on_after(grace) as scope:
            await self._lanes.wait_idle()
            assert self._tool_lanes is not None
            await self._tool_lanes.wait_idle()
        if scope.cancelled_caught:
            log.warning(
                "shutdown grace of %.0f s ran out; unfinished events go back to the broker",
                grace,
            )
        with anyio.CancelScope(shield=True):
            for queue in list(self._consumers):
                await self._release(queue, wait=not scope.cancelled_caught)

    async def _accept(self, delivery: Delivery, consumer: _Consumer) -> None:
        assert self._lanes is not None and self._tool_lanes is not None
        pipeline = self.pipeline
        assert pipeline is not None
        event = Event(
            delivery.body,
            _DeliverySettler(self, delivery),
            queue=delivery.queue,
            delivery_count=delivery.delivery_count,
            redelivered=delivery.redelivered,
        )
        await pipeline.receive(event)
        if event.refusal is not None:
            consumer.hold()
            self._lanes.submit("\0refused", self._job(pipeline.refuse, event, consumer))
        elif not event.decided:  # a control event (cancel) is settled already
            tool = isinstance(event.envelope.body if event.envelope else None, ToolCall)
            lanes = self._tool_lanes if tool else self._lanes
            consumer.hold()
            lanes.submit(event.key, self._job(pipeline.processor(event), event, consumer))

    def _job(
        self, run: Callable[[Event], Awaitable[None]], event: Event, consumer: _Consumer
    ) -> Callable[[], Awaitable[None]]:
        """The lane job that runs `event` and makes sure its delivery is settled."""

        async def job() -> None:
            assert self.pipeline is not None
            if not consumer.start(accepting=self.pipeline.accepting):
                # Left un-acked on purpose: closing the subscription hands it back in order.
                self.pipeline.abandon(event)
                return
            try:
                await run(event)
                self.handled += 1
                self.handled_by_queue[consumer.queue] += 1
            except Exception:
                # Neither acked nor handed back, and the session's later events, queued behind
                # it, must not run before it: give the queue back (closing its channel returns
                # every un-acked event, in order) and take it again.
                envelope_id = event.envelope.id if event.envelope else "(refused message)"
                log.exception(
                    "event %s could not be settled; handing %s back", envelope_id, consumer.queue
                )
                if consumer.stop_starting():  # now: jobs queued behind must not start
                    assert self._tg is not None
                    self._tg.start_soon(self._retake, consumer.queue)
            finally:
                consumer.finish()

        return job
