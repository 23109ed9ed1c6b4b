"""A local Function Compute emulator: MNS queue triggers invoking handler instances in processes.

For each partition queue a trigger pulls messages the way FC's EventBridge MNS trigger does in
event-streaming mode: it waits for a batch (up to `batch_size` messages or `batch_window`
seconds after the first, whichever comes first; its long polls go on meanwhile and while the
batch is invoked, holding at most `batch_size` messages in all), with delivery concurrency 1
per queue, builds the CloudEvents array the real trigger sends, and invokes the function. The
messages are deleted only when the invocation succeeds; a failed one (the handler raised, or
its instance died) is retried with exponential backoff, holding the batch (its visibility is
kept extended), so the partition does not move on meanwhile. After `max_retries` the batch goes
back to the queue (errors tolerance NONE) or is dropped (ALL).

Instances are processes running `agentqueue.deploy.local.fc_instance`: started on demand (a cold
start), reused while warm, at most `max_instances` at once, and stopped after `idle_timeout`
seconds without work (scale to zero), except the `provisioned` ones: FC's provisioned
instances, started and initialised before the first event (a warm pool), kept while the
emulator runs and replaced when one dies. `stats` counts cold starts, warm invocations, failures and
durations. As on FC, an agent turn that waits for a remote tool holds its instance meanwhile, and
the tool's invocation needs another one: keep `max_instances` above the number of agent turns
that run at once, or tool calls time out.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from agentqueue.broker.base import Broker, Delivery, Subscription
from agentqueue.broker.errors import BrokerError
from agentqueue.broker.mns_body import to_wire
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.workers.fc_events import cloud_event

log = logging.getLogger("agentqueue.local_fc")

MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class TriggerConfig:
    """The trigger's batch window and retry policy (scaled down from FC's for local use)."""

    batch_size: int = 10  # CountBasedWindow
    batch_window: float = 0.5  # TimeBasedWindow, seconds
    retry_base: float = 0.5  # first retry after this, doubling (EXPONENTIAL_DECAY_RETRY)
    retry_max_delay: float = 8.0
    max_retries: int = 20
    errors_tolerance: Literal["NONE", "ALL"] = "NONE"


@dataclass
class FCStats:
    """What the emulator saw."""

    cold_starts: int = 0
    warm_invocations: int = 0
    failed_invocations: int = 0
    dropped_batches: int = 0
    events: int = 0
    invocation_ms: list[float] = field(default_factory=list)
    cold_start_ms: list[float] = field(default_factory=list)  # process start to first reply
    provisioned_ms: list[float] = field(default_factory=list)  # process start to ready, warm pool

    def report(self) -> str:
        """One line for humans."""

        def p(values: list[float], q: float) -> str:
            if not values:
                return "-"
            ordered = sorted(values)
            return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.0f} ms"

        median = f"{statistics.median(self.cold_start_ms):.0f} ms" if self.cold_start_ms else "-"
        return (
            f"fc: {self.cold_starts} cold starts, {self.warm_invocations} warm invocations,"
            f" {self.failed_invocations} failed (retried), {self.events} events;"
            f" invocation p50 {p(self.invocation_ms, 0.5)}, p95 {p(self.invocation_ms, 0.95)};"
            f" cold start to first reply median {median}"
        )


class InstanceDied(Exception):
    """An instance process exited (or was killed) during an invocation."""


class _Instance:
    def __init__(self, process: anyio.abc.Process, started: float) -> None:
        self.process = process
        self.started = started
        self.ready = started  # when its initializer had run
        self.provisioned = False
        assert process.stdout is not None, "opened with stdout=PIPE"
        self.reader = BufferedByteReceiveStream(process.stdout)
        self.busy = True
        self.last_used = time.monotonic()
        self.invocations = 0
        self.ids = iter(range(1, 1 << 62))

    async def read(self) -> dict[str, Any]:
        try:
            line = await self.reader.receive_until(b"\n", MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            code = await self.process.wait()
            raise InstanceDied(f"instance {self.process.pid} exited with code {code}") from None
        return json.loads(line)

    async def invoke(self, payload: str) -> dict[str, Any]:
        request = {"id": next(self.ids), "payload": payload}
        try:
            assert self.process.stdin is not None
            await self.process.stdin.send((json.dumps(request) + "\n").encode())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            code = await self.process.wait()
            raise InstanceDied(f"instance {self.process.pid} exited with code {code}") from None
        self.invocations += 1
        return await self.read()

    async def stop(self, grace: float = 10.0) -> None:
        with anyio.CancelScope(shield=True):
            if self.process.stdin is not None:
                await self.process.stdin.aclose()
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


class LocalFC:
    """Triggers for a topology's partition queues, and the instance processes they invoke."""

    def __init__(
        self,
        broker: Broker,
        topology: Topology,
        *,
        env: dict[str, str],
        max_instances: int = 4,
        idle_timeout: float = 30.0,
        trigger: TriggerConfig | None = None,
        queues: list[str] | None = None,
        cwd: str | None = None,
        provisioned: int = 0,
    ) -> None:
        if not 0 <= provisioned <= max_instances:
            raise ValueError(
                f"provisioned instances {provisioned} must be 0 to max_instances ({max_instances}):"
                " raise max_instances or provision fewer"
            )
        self.broker = broker
        self.topology = topology
        self.env = {**os.environ, **env}
        self.max_instances = max_instances
        self.provisioned = provisioned
        self.idle_timeout = idle_timeout
        self.trigger = trigger or TriggerConfig()
        self.queues = queues or [*topology.queues(REQUESTS), *topology.queues(TOOLS)]
        self.cwd = cwd or os.getcwd()
        self.stats = FCStats()
        self._instances: list[_Instance] = []
        self._starting = 0
        self._freed = anyio.Event()

    @property
    def instances(self) -> int:
        """Instance processes alive now."""
        return len(self._instances)

    @property
    def provisioned_instances(self) -> dict[int, float]:
        """pid -> when it was ready (monotonic), of each provisioned instance alive now."""
        return {i.process.pid: i.ready for i in self._instances if i.provisioned}

    def kill_instance(self, rng: random.Random) -> int | None:
        """SIGKILL a random instance, as a host failing under FC would, busy or not; returns
        its pid (None when none is up). A busy one's invocation fails and its batch is retried
        on another instance."""
        alive = [i for i in self._instances if i.process.returncode is None]
        if not alive:
            return None
        instance = rng.choice(alive)
        try:
            instance.process.kill()
        except ProcessLookupError:  # it exited on its own meanwhile (scaled to zero)
            return None
        return instance.process.pid

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the provisioned instances, then every trigger, until cancelled; then stop the
        instances."""
        try:
            async with anyio.create_task_group() as tg:
                async with anyio.create_task_group() as pool:  # as FC: ready before any event
                    for _ in range(self.provisioned):
                        pool.start_soon(self._provision)
                for queue in self.queues:
                    await tg.start(self._trigger, queue)
                tg.start_soon(self._reap_idle)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for instance in list(self._instances):
                    await instance.stop()
                self._instances.clear()

    # ------------------------------------------------------------------ triggers

    async def _trigger(self, queue: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # The subscription is read by a task of its own: a long poll runs in a thread and
        # cannot be cut short, so a window that ended it would last until the poll returns (the
        # whole long-poll wait when no more messages come), not `batch_window`. Reading from a
        # stream, the window ends on time; what the poll then brings opens the next batch.
        arrived, received = anyio.create_memory_object_stream[Delivery]()
        async with (
            await self.broker.consume(queue, prefetch=self.trigger.batch_size) as sub,
            anyio.create_task_group() as tg,
            received,
        ):
            tg.start_soon(self._pull, sub, arrived)
            task_status.started()
            while True:
                batch = [await received.receive()]
                with anyio.move_on_after(self.trigger.batch_window):
                    while len(batch) < self.trigger.batch_size:
                        batch.append(await received.receive())
                await self._deliver(queue, batch)

    @staticmethod
    async def _pull(sub: Subscription, arrived: anyio.abc.ObjectSendStream[Delivery]) -> None:
        # Unbuffered: the subscription's prefetch (the batch size) bounds what is pulled ahead.
        async with arrived:
            async for delivery in sub:
                await arrived.send(delivery)

    async def _deliver(self, queue: str, batch: list[Delivery]) -> None:
        # The MNS message id, as EventBridge passes it: the same when MNS delivers the message
        # again, so the function tells a redelivery from a copy published again.
        events = [
            cloud_event(
                queue, getattr(d, "message_id", None) or uuid.uuid4().hex.upper(), to_wire(d.body)
            )
            for d in batch
        ]
        payload = json.dumps(events, ensure_ascii=False)
        failures = 0
        while True:
            error = await self._invoke(payload, len(batch))
            if error is None:
                await self._settle(batch, ack=True)
                return
            failures += 1
            if failures > self.trigger.max_retries:
                log.error(
                    "giving up on a batch of %d from %s after %d tries: %s",
                    len(batch),
                    queue,
                    failures,
                    error,
                )
                self.stats.dropped_batches += self.trigger.errors_tolerance == "ALL"
                await self._settle(batch, ack=self.trigger.errors_tolerance == "ALL")
                return
            delay = min(self.trigger.retry_max_delay, self.trigger.retry_base * 2 ** (failures - 1))
            log.warning(
                "invocation for %s failed (%s); retrying the batch in %.1f s", queue, error, delay
            )
            await anyio.sleep(delay)

    @staticmethod
    async def _settle(batch: list[Delivery], *, ack: bool) -> None:
        try:
            async with anyio.create_task_group() as tg:  # concurrent acks go as one batch delete
                for delivery in batch:
                    tg.start_soon(delivery.ack if ack else delivery.nack)
        except* BrokerError as group:
            # As EventBridge would: the messages come back once their visibility runs out,
            # and the function answers those already handled from the session store.
            log.warning(
                "could not settle a batch of %d from %s (%s); MNS delivers it again later",
                len(batch),
                batch[0].queue,
                group.exceptions[0],
            )

    # ------------------------------------------------------------------ instances

    async def _invoke(self, payload: str, events: int) -> str | None:
        """Run one invocation; None on success, else why it failed."""
        try:
            instance, cold = await self._acquire()
        except (OSError, InstanceDied, RuntimeError) as exc:
            self.stats.failed_invocations += 1
            return f"could not start an instance: {exc}"
        if cold and not instance.provisioned:
            self.stats.cold_starts += 1
        else:
            self.stats.warm_invocations += 1
        try:
            reply = await instance.invoke(payload)
        except InstanceDied as exc:
            self._instances.remove(instance)
            self._notify()
            self.stats.failed_invocations += 1
            return str(exc)
        instance.busy = False
        instance.last_used = time.monotonic()
        self._notify()
        if cold and not instance.provisioned:
            self.stats.cold_start_ms.append((time.monotonic() - instance.started) * 1000)
        self.stats.invocation_ms.append(float(reply.get("ms", 0.0)))
        if not reply.get("ok"):
            self.stats.failed_invocations += 1
            return str(reply.get("error") or "the handler failed")
        self.stats.events += events
        return None

    async def _acquire(self) -> tuple[_Instance, bool]:
        while True:
            freed = self._freed
            idle = [i for i in self._instances if not i.busy]
            if idle:
                instance = max(
                    idle, key=lambda i: i.last_used
                )  # warmest first: others can idle out
                instance.busy = True
                return instance, instance.invocations == 0
            if len(self._instances) + self._starting < self.max_instances:
                return await self._spawn(), True
            await freed.wait()

    async def _spawn(self) -> _Instance:
        self._starting += 1
        started = time.monotonic()
        try:
            process = await anyio.open_process(
                [sys.executable, "-m", "agentqueue.deploy.local.fc_instance"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                cwd=self.cwd,
                env=self.env,
            )
            instance = _Instance(process, started)
            hello = await instance.read()
            if not hello.get("ready"):
                await instance.stop(grace=1.0)
                raise RuntimeError(hello.get("error") or "the instance did not start")
        finally:
            self._starting -= 1
        instance.ready = time.monotonic()
        self._instances.append(instance)
        return instance

    async def _provision(self) -> None:
        instance = await self._spawn()
        instance.provisioned, instance.busy = True, False
        self.stats.provisioned_ms.append((instance.ready - instance.started) * 1000)
        self._notify()

    def _notify(self) -> None:
        self._freed.set()
        self._freed = anyio.Event()

    async def _reap_idle(self) -> None:
        while True:
            await anyio.sleep(min(1.0, self.idle_timeout / 2))
            now = time.monotonic()
            for instance in list(self._instances):
                idle = not instance.busy and now - instance.last_used > self.idle_timeout
                if idle and not instance.provisioned:
                    self._instances.remove(instance)
                    await instance.stop()
            # FC replaces a provisioned instance that died; so does the emulator.
            alive = sum(i.provisioned for i in self._instances)
            if alive < self.provisioned and len(self._instances) < self.max_instances:
                try:
                    await self._provision()
                except (OSError, InstanceDied, RuntimeError) as exc:
                    log.warning("could not start a provisioned instance: %s", exc)


__all__ = ["FCStats", "InstanceDied", "LocalFC", "TriggerConfig"]


async def serve_local_fc(
    broker_url: str,
    topology: Topology,
    env: dict[str, str],
    *,
    max_instances: int = 4,
    idle_timeout: float = 30.0,
    trigger: TriggerConfig | None = None,
    report_every: float = 30.0,
    provisioned: int = 0,
) -> FCStats:
    """Run the emulator until SIGINT/SIGTERM, logging its counts now and then; returns them."""
    import signal

    from agentqueue.broker.urls import open_broker

    async with open_broker(broker_url) as broker:
        await broker.declare(topology)
        fc = LocalFC(
            broker,
            topology,
            env=env,
            max_instances=max_instances,
            idle_timeout=idle_timeout,
            trigger=trigger,
            provisioned=provisioned,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(fc.run)
            log.warning(
                "FC emulator: %d triggers on %s, up to %d instances, %d provisioned",
                len(fc.queues),
                broker_url,
                max_instances,
                provisioned,
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                with anyio.move_on_after(report_every) as scope:
                    async for _ in signals:
                        break
                while scope.cancelled_caught:
                    log.warning("%s; %d instances up", fc.stats.report(), fc.instances)
                    with anyio.move_on_after(report_every) as scope:
                        async for _ in signals:
                            break
            tg.cancel_scope.cancel()
    return fc.stats
