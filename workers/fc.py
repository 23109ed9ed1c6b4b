"""The Function Compute entrypoint: `agentqueue.workers.fc.handler(event, context)`.

An MNS queue triggers the function through EventBridge, which hands it a batch of messages (see
`fc_events`) and no receipt handles: returning acks the whole batch, raising makes the trigger
retry it. Each message runs through the same `EventProcessor` a local worker uses: session lanes
within the batch, the session store's dedup and lease, retries, dead letters, replies to
`reply_to` over MNS. For a batch that means:

- ack: nothing to do (the trigger deletes the batch when the invocation returns);
- hand back (the session's lease is held elsewhere): the invocation raises at the end, so the
  trigger retries the batch; events already handled are answered from the store then;
- dead letter: the handler publishes the `DeadLetter` record to the dead-letter queue itself.

A poison event (one that kills the instance or times the function out) would block its partition
forever, as the trigger retries the batch in order. So each event's attempts are counted in the
session store, and an event seen more than `delivery_limit` times (default 10) is dead-lettered
unrun. Not `max_attempts`: the events running beside a poison event in its batch die with it.

Configuration comes from the function's environment: `AGENTQUEUE_APP` (module:attribute),
`AGENTQUEUE_BROKER` (an mns:// URL; credentials as `broker.mns_config` says),
`AGENTQUEUE_STORE` (shared by all instances, e.g. redis://), and optionally
`AGENTQUEUE_NAMESPACE`, `AGENTQUEUE_PARTITIONS`, `AGENTQUEUE_TOOL_PARTITIONS`,
`AGENTQUEUE_MAX_ATTEMPTS`, `AGENTQUEUE_DELIVERY_LIMIT`, `AGENTQUEUE_LEASE_TTL`,
`AGENTQUEUE_CONCURRENCY` and `AGENTQUEUE_PRELOAD` (modules the `initializer` imports, e.g.
`agentscope.agent`).

FC calls the handler synchronously and keeps the instance between invocations, so what is
costly to make lives at module level: the imported app, the broker and store connections, and
one event loop in a background thread (an anyio blocking portal). Keeping the loop (rather than
`anyio.run` per invocation) keeps the MNS connections' worker threads, the reply consumer for
remote tools and warm session state alive across invocations; an invocation costs one hand-off
to that loop. AgentScope is imported only when an agent event arrives (or by `initializer` when
`AGENTQUEUE_PRELOAD` asks for it).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.urls import open_broker
from agentqueue.protocol.admission import Refusal
from agentqueue.protocol.codec import encode_dead_letter
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import (
    AgentRequest,
    Cancel,
    DeadLetter,
    Envelope,
    ToolCall,
)
from agentqueue.workers.admission import Admission
from agentqueue.workers.agent_handler import AgentHandler
from agentqueue.workers.app import load_app
from agentqueue.workers.errors import WorkerError
from agentqueue.workers.fc_config import FCConfig
from agentqueue.workers.fc_events import TriggerMessage, read_trigger_payload
from agentqueue.workers.processing import EventProcessor, Handler
from agentqueue.workers.refusal import answer_refused
from agentqueue.workers.remote_tools import RemoteTools
from agentqueue.workers.retry import RetryPolicy
from agentqueue.workers.session_lane import SessionLanes
from agentqueue.workers.session_store import SessionStore, open_store
from agentqueue.workers.tool_handler import ToolHandler

log = logging.getLogger("agentqueue.fc")


class BatchNotDone(WorkerError):
    """Raised to the trigger so it retries the batch; names the events not settled and why."""


@dataclass
class BatchOutcome:
    """How each event of one invocation was settled."""

    handled: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    handed_back: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "<id>: <error>"

    @property
    def done(self) -> bool:
        """Whether the trigger may delete the whole batch."""
        return not self.handed_back and not self.failed

    def summary(self) -> dict[str, int]:
        """Counts per outcome, the handler's return value."""
        return {k: len(v) for k, v in vars(self).items()}


class _BatchSettler:
    """Settles one event of a trigger batch (see the module docs)."""

    def __init__(
        self,
        runtime: FCInstance,
        message: TriggerMessage,
        envelope: Envelope,
        queue: str,
        attempts: int,
    ):
        self.runtime, self.message, self.envelope = runtime, message, envelope
        self.queue, self.attempts = queue, attempts
        self.state = "open"

    async def ack(self) -> None:
        self.state = "acked"

    async def hand_back(self) -> None:
        self.state = "handed_back"

    async def dead_letter(self, reason: str) -> None:
        await self.runtime.publish_dead_letter(
            self.message,
            self.queue,
            reason,
            self.attempts,
            self.envelope.id,
            self.envelope.session_id,
        )
        self.state = "dead_lettered"


class FCInstance:
    """What an FC instance keeps between invocations: app, connections and its event loop."""

    def __init__(self, config: FCConfig) -> None:
        self.config = config
        self.topology = config.topology
        self.instance_id = f"fc-{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.app = load_app(config.app)
        self.broker: Broker = open_broker(config.broker)
        self.store: SessionStore = open_store(config.store)
        self.router = ReplyRouter(self.broker, self.topology.reply_queue(self.instance_id))
        handlers: dict[type, Handler] = {
            AgentRequest: AgentHandler(
                self.app,
                RemoteTools(self.broker, self.topology, self.router),
                worker_name=self.instance_id,
            ),
            ToolCall: ToolHandler(self.app, worker_name=self.instance_id),
        }
        self.processor = EventProcessor(
            self.broker,
            self.store,
            handlers,
            worker_id=self.instance_id,
            retry=RetryPolicy(max_attempts=config.max_attempts),
            lease_ttl=config.lease_ttl,
            delivery_limit=config.delivery_limit,
        )
        self.invocations = 0
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._router_task: Future[None] | None = None
        self._lock = threading.Lock()

    def start(self) -> FCInstance:
        """Start the event loop thread and connect to the broker."""
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._portal.call(self.broker.connect)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the reply consumer, disconnect, stop the loop (the instance is going away)."""
        if self._portal is None or self._portal_cm is None:
            return
        if self._router_task is not None:
            self._router_task.cancel()
        try:
            self._portal.call(self._aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None

    async def _aclose(self) -> None:
        await self.broker.close()
        await self.store.close()

    def invoke(self, messages: list[TriggerMessage]) -> BatchOutcome:
        """Handle one batch on the instance's loop; blocks the calling (FC) thread."""
        assert self._portal is not None, "FCInstance.start() was not called"
        if self._router_task is None and any(b'"agent_request"' in m.body for m in messages):
            with self._lock:
                if self._router_task is None:
                    # Remote tools answer on this instance's own reply queue; consumed from the
                    # first agent event on, so tool-only instances never pay for it.
                    self._router_task, _ = self._portal.start_task(self._serve_replies)
        self.invocations += 1
        return self._portal.call(self._handle, messages)

    async def _serve_replies(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.broker.declare_reply_queue(self.router.queue)
        await self.router.run(task_status=task_status)

    async def _handle(self, messages: list[TriggerMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        async with anyio.create_task_group() as tg:
            lanes = SessionLanes(tg, self.config.concurrency)
            for message in messages:
                await self._dispatch(lanes, message, outcome)
        return outcome

    async def _dispatch(
        self, lanes: SessionLanes, message: TriggerMessage, outcome: BatchOutcome
    ) -> None:
        # The trigger gives no dequeue count: a retried batch carries the same MNS message id,
        # a copy published again gets a new one.
        admission = Admission(self.broker.signing, store=self.store)
        verdict = await admission.admit(
            message.body, redelivered=False, message_id=message.message_id
        )
        if isinstance(verdict, Refusal):
            refused = verdict
            lanes.submit("\0undecodable", lambda: self._refuse(message, refused, outcome))
            return
        envelope = verdict
        if isinstance(envelope.body, Cancel):
            # Reaches a request of the same batch (queued behind it in its lane) or running here.
            self.processor.cancel(envelope.body.request_id)
            outcome.handled.append(envelope.id)
            return
        lanes.submit(
            self.processor.lane_key(envelope), lambda: self._run(message, envelope, outcome)
        )

    async def _run(
        self, message: TriggerMessage, envelope: Envelope, outcome: BatchOutcome
    ) -> None:
        queue = message.queue or self.topology.route(envelope)
        try:
            attempts = await self._count_attempt(envelope)
            settler = _BatchSettler(self, message, envelope, queue, attempts)
            await self.processor.process(envelope, settler, attempts, queue=queue)
        except Exception as exc:
            log.exception("event %s of session %r failed", envelope.id, envelope.session_id)
            outcome.failed.append(f"{envelope.id}: {type(exc).__name__}: {exc}")
            return
        if settler.state == "acked":
            outcome.handled.append(envelope.id)
        elif settler.state == "dead_lettered":
            outcome.dead_lettered.append(envelope.id)
        elif settler.state == "handed_back":
            outcome.handed_back.append(envelope.id)
        else:
            outcome.failed.append(f"{envelope.id}: not settled")

    async def _count_attempt(self, envelope: Envelope) -> int:
        handler = self.processor.handlers.get(type(envelope.body))
        if handler is None:
            return 1
        key = handler.store_key(envelope)
        if (
            handler.deduplicates(envelope)
            and await self.store.handled(key, envelope.id) is not None
        ):
            return 1  # answered from the store; counting would leave a stale counter behind
        return await self.store.count_attempt(key, envelope.id)

    async def publish_dead_letter(
        self,
        message: TriggerMessage,
        queue: str,
        reason: str,
        attempts: int,
        envelope_id: str | None,
        session_id: str | None,
    ) -> None:
        """Publish the dead-letter record of one trigger message."""
        record = DeadLetter(
            reason=reason,
            queue=queue,
            payload=message.body,
            failed_at=time.time(),
            attempts=attempts,
            envelope_id=envelope_id,
            session_id=session_id,
        )
        await self.broker.publish(
            self.topology.dead_letter_queue, encode_dead_letter(record), sign=False
        )

    async def _refuse(
        self, message: TriggerMessage, refused: Refusal, outcome: BatchOutcome
    ) -> None:
        queue = message.queue or "unknown"
        log.error("dead-lettering a message refused on %s: %s", queue, refused.reason)
        await self.publish_dead_letter(
            message, queue, refused.reason, 1, refused.id, refused.session_id
        )
        outcome.dead_lettered.append(refused.id or message.message_id or "?")
        await answer_refused(self.broker, refused)


_instance: FCInstance | None = None
_instance_lock = threading.Lock()


def instance() -> FCInstance:
    """The instance-level runtime, made on first use and kept for later invocations."""
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                config = FCConfig.from_env()
                created = FCInstance(config).start()
                atexit.register(created.close)
                _instance = created
    return _instance


def initializer(context: Any) -> None:
    """FC's initializer hook: connect, load the app, import `AGENTQUEUE_PRELOAD` modules."""
    runtime = instance()
    for module in runtime.config.preload:
        importlib.import_module(module)


def handler(event: bytes | str, context: Any) -> str:
    """Handle one trigger batch; raises `BatchNotDone` so the trigger retries the batch."""
    runtime = instance()
    messages = read_trigger_payload(event)
    outcome = runtime.invoke(messages)
    if not outcome.done:
        problems = [f"{i}: handed back (session busy elsewhere)" for i in outcome.handed_back]
        raise BatchNotDone(
            f"{len(problems) + len(outcome.failed)} of {len(messages)} events were not settled;"
            f" the trigger retries the batch ({'; '.join(problems + outcome.failed)})"
        )
    return msgspec.json.encode(outcome.summary()).decode()


def shutdown() -> None:
    """Close the instance-level runtime (FC's pre-stop hook, or at exit)."""
    global _instance
    with _instance_lock:
        if _instance is not None:
            _instance.close()
            _instance = None


__all__ = ["BatchNotDone", "FCConfig", "FCInstance", "handler", "initializer", "shutdown"]
