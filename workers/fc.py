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
forever, as the trigger retries the batch in order. So each event's runs that started and never
finished are counted in the session store (as on RabbitMQ), and an event whose runs died more
than `delivery_limit` times (default 20) is dead-lettered unrun. An event of the batch that had
finished, or waited, while its instance died running another is not charged. Not
`max_attempts`: the events running beside a poison event in its batch die with it.

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
to that loop. AgentScope is imported only when an agent event arrives, on FC's thread before
the batch is handed to the loop (so lease renewals keep running), or by `initializer` when
`AGENTQUEUE_PRELOAD` asks for it (what a provisioned instance, the warm pool, is given).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import msgspec

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.replies import ReplyRouter
from agentqueue.protocol.codec import encode_dead_letter
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import AgentRequest, Approval, Cancel, DeadLetter, ToolCall
from agentqueue.workers.admission import check_signing
from agentqueue.workers.agent_handler import AgentHandler, import_agentscope
from agentqueue.workers.app import load_app
from agentqueue.workers.assembly import assemble_pipeline
from agentqueue.workers.errors import WorkerError
from agentqueue.workers.fc_config import FCConfig
from agentqueue.workers.fc_events import TriggerMessage, read_trigger_payload
from agentqueue.workers.handling import Handler
from agentqueue.workers.pipeline import Event
from agentqueue.workers.remote_tools import RemoteTools
from agentqueue.workers.session_lane import SessionLanes
from agentqueue.workers.session_store import SessionStore
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

    def __init__(self, runtime: FCInstance, message: TriggerMessage, queue: str) -> None:
        self.runtime, self.message, self.queue = runtime, message, queue
        self.state = "open"
        self.event: Event | None = None

    async def ack(self) -> None:
        self.state = "acked"

    async def hand_back(self) -> None:
        self.state = "handed_back"

    async def dead_letter(
        self, reason: str, envelope_id: str | None, session_id: str | None
    ) -> None:
        attempts = (self.event.runs or self.event.delivery_count) if self.event is not None else 1
        await self.runtime.publish_dead_letter(
            self.message, self.queue, reason, attempts, envelope_id, session_id
        )
        self.state = "dead_lettered"


class FCInstance:
    """What an FC instance keeps between invocations: app, connections and its event loop."""

    def __init__(self, config: FCConfig) -> None:
        self.config = config
        self.topology = config.topology
        self.instance_id = f"fc-{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
        self.app = load_app(config.app)
        self.broker: Broker = config.settings.open_broker()
        self.store: SessionStore = config.settings.open_store()
        self.stream_log = config.settings.open_stream_log()
        self.router = ReplyRouter(self.broker, self.topology.reply_queue(self.instance_id))
        agents = AgentHandler(
            self.app,
            RemoteTools(self.broker, self.topology, self.router),
            worker_name=self.instance_id,
            approval_timeout=config.settings.approval_timeout,
        )
        handlers: dict[type, Handler] = {
            AgentRequest: agents,
            Approval: agents,  # a decision or a cancel resumes the session's paused turn
            Cancel: agents,
            ToolCall: ToolHandler(self.app, worker_name=self.instance_id, store=self.store),
        }
        self.pipeline = assemble_pipeline(
            self.app,
            self.broker,
            self.store,
            handlers,
            config.settings,
            worker_id=self.instance_id,
            function_compute=True,  # no delivery count from the trigger: counted in the store
            stream_log=self.stream_log,
        )
        self.invocations = 0
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._router_task: Future[None] | None = None
        self._agentscope = False  # imported (by the first agent batch, or the initializer)
        self._lock = threading.Lock()

    def start(self) -> FCInstance:
        """Start the event loop thread and connect to the broker."""
        check_signing(self.broker.signing, who="function")
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
        if self.stream_log is not None:
            await self.stream_log.close()

    def invoke(self, messages: list[TriggerMessage]) -> BatchOutcome:
        """Handle one batch on the instance's loop; blocks the calling (FC) thread."""
        assert self._portal is not None, "FCInstance.start() was not called"
        agent_events = (b'"agent_request"', b'"approval"')
        agents = any(t in m.body for m in messages for t in agent_events)
        if agents and not self._agentscope:
            # Here, on FC's thread, before the batch takes its sessions' leases: the import
            # takes seconds, and on the loop it would stall lease renewals meanwhile.
            self.import_agentscope()
        if self._router_task is None and agents:
            with self._lock:
                if self._router_task is None:
                    # Remote tools answer on this instance's own reply queue; consumed from the
                    # first agent event on, so tool-only instances never pay for it.
                    self._router_task, _ = self._portal.start_task(self._serve_replies)
        self.invocations += 1
        return self._portal.call(self._handle, messages)

    def import_agentscope(self) -> None:
        """Import what an agent turn needs, once per instance (blocking)."""
        import_agentscope()
        self._agentscope = True

    async def _serve_replies(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await self.broker.declare_reply_queue(self.router.queue)
        await self.router.run(task_status=task_status)

    async def _handle(self, messages: list[TriggerMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        async with anyio.create_task_group() as tg:
            lanes = SessionLanes(tg, self.config.settings.concurrency)
            for message in messages:
                await self._dispatch(lanes, message, outcome)
        return outcome

    async def _dispatch(
        self, lanes: SessionLanes, message: TriggerMessage, outcome: BatchOutcome
    ) -> None:
        settler = _BatchSettler(self, message, message.queue or "unknown")
        event = Event(message.body, settler, queue=message.queue, message_id=message.message_id)
        settler.event = event
        try:
            await self.pipeline.receive(event)
        except Exception as exc:  # never loses the batch: the trigger retries it
            log.exception("admitting a message from %s failed", message.queue or "?")
            outcome.failed.append(f"{message.message_id or '?'}: {type(exc).__name__}: {exc}")
            return
        if event.refusal is not None:
            lanes.submit(
                "\0refused", lambda: self._run(self.pipeline.refuse, event, settler, outcome)
            )
        elif event.decided:  # a control event: acted on at once (it reaches this batch too)
            outcome.handled.append(event.envelope.id if event.envelope else "?")
        else:
            if event.queue is None and event.envelope is not None:
                event.queue = settler.queue = self.topology.route(event.envelope)
            lanes.submit(
                event.key, lambda: self._run(self.pipeline.process, event, settler, outcome)
            )

    async def _run(
        self,
        run: Callable[[Event], Awaitable[None]],
        event: Event,
        settler: _BatchSettler,
        outcome: BatchOutcome,
    ) -> None:
        envelope_id = event.envelope.id if event.envelope else (event.message_id or "?")
        try:
            await run(event)
        except BrokerConnectionError as exc:  # expected while MNS restarts: one line
            log.warning("event %s left for the trigger's retry: %s", envelope_id, exc)
            outcome.failed.append(f"{envelope_id}: {type(exc).__name__}: {exc}")
            return
        except Exception as exc:
            log.exception("event %s failed", envelope_id)
            outcome.failed.append(f"{envelope_id}: {type(exc).__name__}: {exc}")
            return
        state = settler.state
        if state == "acked":
            outcome.handled.append(envelope_id)
        elif state == "dead_lettered":
            outcome.dead_lettered.append(envelope_id)
        elif state == "handed_back":
            outcome.handed_back.append(envelope_id)
        else:
            outcome.failed.append(f"{envelope_id}: not settled")

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
