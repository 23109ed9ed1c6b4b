"""Session lanes and delivery semantics on the embedded broker, with real workers."""

from __future__ import annotations

import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator

import anyio
import pytest

from agentqueue import App, Client, RequestFailed
from agentqueue.broker.errors import BrokerConnectionError
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol import (
    Envelope,
    ToolCall,
    ToolResult,
    decode,
    decode_dead_letter,
    encode,
    new_id,
)
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.waiting import wait_for


class Recorder:
    """What the tool saw: per-session order, per-session overlap, cross-session overlap."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.running: set[str] = set()
        self.same_session_overlap = 0
        self.max_parallel = 0
        self.pids: set[int] = set()

    async def record(self, session: str, seq: int) -> str:
        if session in self.running:
            self.same_session_overlap += 1
        self.running.add(session)
        self.max_parallel = max(self.max_parallel, len(self.running))
        await anyio.sleep(random.uniform(0, 0.003))
        self.seen[session].append(seq)
        self.running.discard(session)
        return f"{session}:{seq}"


@pytest.fixture
def url() -> str:
    return f"memory://delivery-{new_id()[:8]}"


@pytest.fixture
def store_url() -> str:
    return f"memory://store-{new_id()[:8]}"


def tool_call(
    session: str, name: str, arguments: dict, reply_to: str, event_id: str | None = None
) -> Envelope:
    event_id = event_id or new_id()
    return Envelope(
        id=event_id,
        session_id=session,
        correlation_id=event_id,
        reply_to=reply_to,
        body=ToolCall(name=name, arguments=arguments, call_id=event_id),
        created_at=time.time(),
    )


async def start_worker(
    task_group: anyio.abc.TaskGroup,
    app: App,
    broker: MemoryBroker,
    store_url: str,
    topology: Topology,
    role: str = "all",
    **fields: object,
) -> Worker:
    """A worker on the embedded broker and a memory store, serving once this returns."""
    settings = worker_settings(topology, **fields)
    worker = Worker(app, broker, MemorySessionStore(store_url), settings, role=role)  # type: ignore[arg-type]
    await task_group.start(worker.run)
    return worker


@contextlib.asynccontextmanager
async def background() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose tasks (workers, routers) are cancelled when the test is done."""
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


async def test_each_session_sees_its_events_in_order_and_one_at_a_time(
    url: str, store_url: str
) -> None:
    recorder = Recorder()
    app = App("ordering")
    app.tool("record")(recorder.record)
    topology = Topology(namespace="ord", partitions=8, tool_partitions=8)
    async with MemoryBroker(url) as broker, background() as task_group:
        for served in (range(0, 4), range(4, 8)):
            worker = Worker(
                app,
                broker,
                MemorySessionStore(store_url),
                worker_settings(topology, concurrency=16),
                role="tools",
                tool_partitions=served,
            )
            await task_group.start(worker.run)
        reply_queue = topology.reply_queue("test")
        await broker.declare_reply_queue(reply_queue)
        router = ReplyRouter(broker, reply_queue)
        await task_group.start(router.run)
        sessions = [f"session-{i}" for i in range(50)]
        inboxes = []
        for seq in range(20):  # interleaved: every session's seq 0, then every seq 1, ...
            for session in sessions:
                envelope = tool_call(
                    session, "record", {"session": session, "seq": seq}, reply_queue
                )
                inboxes.append(router.expect(envelope.id))
                await broker.publish(topology.route(envelope), encode(envelope))
        with anyio.fail_after(60):
            replies = [await inbox.get() for inbox in inboxes]
    assert all(isinstance(r.body, ToolResult) and r.body.ok for r in replies)
    assert {s: recorder.seen[s] for s in sessions} == {s: list(range(20)) for s in sessions}
    assert recorder.same_session_overlap == 0
    assert recorder.max_parallel > 1  # different sessions did run at the same time


async def test_an_event_whose_worker_vanishes_mid_run_is_redelivered_and_takes_effect_once(
    url: str, store_url: str
) -> None:
    effects: list[str] = []
    started = anyio.Event()
    app = App("crash")

    @app.tool("transfer")
    async def transfer(account: str) -> str:
        started.set()
        await anyio.sleep(0.3)  # a tool still running when its worker vanishes (cancelled there)
        effects.append(account)
        return f"moved {account}"

    topology = Topology(namespace="crash", partitions=1, tool_partitions=1)
    doomed_broker = MemoryBroker(url)
    await doomed_broker.connect()
    doomed = Worker(
        app, doomed_broker, MemorySessionStore(store_url), worker_settings(topology), role="tools"
    )
    doomed_scope = anyio.CancelScope()

    async def run_doomed(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with doomed_scope:
            await doomed.run(task_status=task_status)

    async with MemoryBroker(url) as broker, background() as task_group:
        await task_group.start(run_doomed)
        survivor = Worker(
            app, broker, MemorySessionStore(store_url), worker_settings(topology), role="tools"
        )
        await task_group.start(survivor.run)  # subscribed second: standby until the first goes
        async with Client(broker, topology=topology) as client:
            async with anyio.create_task_group() as calls:
                result: list[str] = []

                async def call() -> None:
                    result.append(
                        await client.call_tool(
                            "transfer", {"account": "acct-1"}, session_id="s1", timeout=20
                        )
                    )

                calls.start_soon(call)
                with anyio.fail_after(10):
                    await started.wait()
                # The first worker's process dies mid-run: its connection (and consumers) go away.
                doomed_scope.cancel()
                await doomed_broker.close()
    assert result == ["moved acct-1"]
    assert effects == ["acct-1"]


async def test_a_redelivered_event_id_is_answered_from_the_stored_result_not_run_again(
    url: str, store_url: str
) -> None:
    runs: list[int] = []
    app = App("dedup")

    @app.tool("charge")
    async def charge(amount: int) -> str:
        runs.append(amount)
        return f"charged {amount} (run {len(runs)})"

    topology = Topology(namespace="dedup", partitions=2, tool_partitions=2)
    async with MemoryBroker(url) as broker, background() as task_group:
        await task_group.start(
            Worker(
                app, broker, MemorySessionStore(store_url), worker_settings(topology), role="tools"
            ).run
        )
        reply_queue = topology.reply_queue("dedup")
        await broker.declare_reply_queue(reply_queue)
        router = ReplyRouter(broker, reply_queue)
        await task_group.start(router.run)
        envelope = tool_call("s1", "charge", {"amount": 5}, reply_queue, event_id="evt-1")
        answers = []
        for _ in range(2):  # the same event id published twice, as a redelivery would
            inbox = router.expect("evt-1")
            await broker.publish(topology.route(envelope), encode(envelope))
            with anyio.fail_after(10):
                answers.append((await inbox.get()).body)
    assert runs == [5]
    assert answers[0] == answers[1] and answers[0].output == "charged 5 (run 1)"


async def test_malformed_and_unknown_events_are_dead_lettered_and_the_worker_keeps_serving(
    url: str, store_url: str
) -> None:
    app = App("bad-input")

    @app.tool("ping")
    async def ping() -> str:
        return "pong"

    topology = Topology(namespace="bad", partitions=1, tool_partitions=1)
    async with MemoryBroker(url) as broker, background() as task_group:
        await task_group.start(
            Worker(app, broker, MemorySessionStore(store_url), worker_settings(topology)).run
        )
        queue = topology.queue("requests", 0)
        await broker.publish(queue, b"{this is not json")
        await broker.publish(
            queue, b'{"id":"e2","session_id":"s","body":{"type":"launch_missiles"}}'
        )
        async with Client(broker, topology=topology) as client:
            assert await client.call_tool("ping", timeout=10) == "pong"
        reasons = []
        with anyio.fail_after(10):
            while len(reasons) < 2:
                delivery = await broker.get(topology.dead_letter_queue)
                if delivery is None:
                    await anyio.sleep(0.02)
                    continue
                reasons.append(decode_dead_letter(delivery.body).reason)
                await delivery.ack()
    assert reasons[0].startswith("not a JSON envelope: JSON is malformed")
    assert reasons[1] == "invalid envelope: Invalid value 'launch_missiles' - at `$.body.type`"


async def test_a_handler_that_always_fails_is_dead_lettered_after_max_attempts_and_the_caller_gets_the_error(
    url: str, store_url: str
) -> None:
    attempts: list[float] = []
    app = App("poison")

    @app.agent("broken")
    def broken(ctx):  # type: ignore[no-untyped-def]
        attempts.append(time.monotonic())
        raise RuntimeError("model endpoint refused the key")

    topology = Topology(namespace="poison", partitions=2, tool_partitions=1)
    async with MemoryBroker(url) as broker, background() as task_group:
        await start_worker(
            task_group,
            app,
            broker,
            store_url,
            topology,
            max_attempts=3,
            retry_base_delay=0.01,
        )
        async with Client(broker, topology=topology) as client:
            with pytest.raises(RequestFailed) as info:
                await client.call("hello", session_id="s1", timeout=30)
        dead = await broker.get(topology.dead_letter_queue)
    assert (
        str(info.value) == "failed after 3 attempts: RuntimeError: model endpoint refused the key"
    )
    assert len(attempts) == 3
    assert dead is not None and decode_dead_letter(dead.body).reason == str(info.value)


async def test_an_event_that_runs_longer_than_the_lease_keeps_its_lease_and_takes_effect_once(
    url: str, store_url: str
) -> None:
    runs: list[str] = []
    app = App("slow-turn")

    @app.tool("think")
    async def think(topic: str) -> str:
        runs.append(topic)
        await anyio.sleep(1.5)  # three times the lease TTL, like a slow model call
        return f"thought about {topic}"

    topology = Topology(namespace="lease", partitions=1, tool_partitions=1)
    async with MemoryBroker(url) as broker, background() as task_group:
        await start_worker(
            task_group, app, broker, store_url, topology, role="tools", lease_ttl=0.5
        )
        async with Client(broker, topology=topology) as client:
            answer = await client.call_tool(
                "think", {"topic": "queues"}, session_id="s1", timeout=30
            )
    assert answer == "thought about queues"
    assert runs == ["queues"]


async def test_a_broker_outage_inside_a_handler_does_not_use_up_its_attempts(
    url: str, store_url: str
) -> None:
    outages: list[float] = []
    app = App("outage")

    @app.agent("assistant")
    def assistant(ctx):  # type: ignore[no-untyped-def]
        if len(outages) < 3:  # as a delta or a tool call published while the broker restarts
            outages.append(time.monotonic())
            raise BrokerConnectionError("cannot publish to 'outage-reply': connection reset")
        return ctx.build_agent("You answer briefly.")

    topology = Topology(namespace="outage", partitions=1, tool_partitions=1)
    async with MemoryBroker(url) as broker, background() as task_group:
        await start_worker(
            task_group,
            app,
            broker,
            store_url,
            topology,
            max_attempts=2,
            retry_base_delay=0.01,
        )
        async with Client(broker, topology=topology) as client:
            answer = await client.call("hello", session_id="s1", timeout=60)
        dead = await broker.get(topology.dead_letter_queue)
    assert len(outages) == 3  # more outages than attempts, and still answered
    assert answer.kind == "final" and answer.text, answer
    assert dead is None


async def test_a_stored_answer_to_a_missing_queue_is_acked_at_once_and_sent_when_it_returns(
    url: str, store_url: str
) -> None:
    # An agent worker killed while its tool calls ran leaves their answers nowhere to go. The
    # answers are in the store, so the calls are acked at once: waiting out the grace first
    # kept them unacked, and a tool worker killed meanwhile had them redelivered to wait again.
    runs: list[str] = []
    app = App("stored")

    @app.tool("note")
    async def note(text: str) -> str:
        runs.append(text)
        return f"noted {text}"

    topology = Topology(namespace="stored", partitions=1, tool_partitions=1)
    (tool_queue,) = topology.queues("tools")
    async with MemoryBroker(url) as broker, background() as task_group:
        # A grace no test outlives: whatever happens, happens while the queue is missing.
        await start_worker(
            task_group, app, broker, store_url, topology, role="tools", reply_grace=600
        )
        await broker.declare_reply_queue("live-replies")
        async with await broker.consume("live-replies") as replies:
            orphan = tool_call("s1", "note", {"text": "a"}, "orphan-replies", event_id="evt-a")
            after = tool_call("s1", "note", {"text": "b"}, "live-replies", event_id="evt-b")
            for envelope in (orphan, after):
                await broker.publish(topology.route(envelope), encode(envelope))
            with anyio.fail_after(10):
                answer = decode((await replies.__anext__()).body)
            assert answer.body.output == "noted b"  # the session's lane was not held
            stats = await broker.stats(tool_queue)
            assert (stats.ready, stats.unacked) == (0, 0), stats  # both settled

        # The requester comes back within the grace: its answer is sent then.
        await broker.declare_reply_queue("orphan-replies")
        async with await broker.consume("orphan-replies") as late:
            with anyio.fail_after(10):
                answer = decode((await late.__anext__()).body)
        assert answer.correlation_id == "evt-a" and answer.body.output == "noted a"
    assert runs == ["a", "b"]


async def test_a_reply_waits_for_its_queue_to_come_back_and_gives_up_at_the_deadline(
    url: str, store_url: str
) -> None:
    runs: list[str] = []
    app = App("late")

    @app.tool("note")
    async def note(text: str) -> str:
        runs.append(text)
        return f"noted {text}"

    topology = Topology(namespace="late", partitions=1, tool_partitions=1)
    async with MemoryBroker(url) as broker, background() as task_group:
        await start_worker(task_group, app, broker, store_url, topology, role="tools")
        # The requester is reconnecting: its reply queue comes back after the tool has run.
        first = tool_call("s1", "note", {"text": "a"}, "late-replies", event_id="evt-a")
        await broker.publish(topology.route(first), encode(first))
        await wait_for(lambda: runs == ["a"], 10, "the tool to run while its reply queue is gone")
        await broker.declare_reply_queue("late-replies")
        async with await broker.consume("late-replies") as replies:
            with anyio.fail_after(10):
                answer = decode(next_body := (await replies.__anext__()).body)
            assert answer.body.output == "noted a", next_body

            # A requester gone for good: its answer is given up at the event's deadline, the
            # event is settled, and the session's next event runs.
            gone = tool_call("s1", "note", {"text": "b"}, "gone-replies", event_id="evt-b")
            gone.deadline = time.time() + 1.5
            second = tool_call("s1", "note", {"text": "c"}, "late-replies", event_id="evt-c")
            for envelope in (gone, second):
                await broker.publish(topology.route(envelope), encode(envelope))
            with anyio.fail_after(10):
                answer = decode((await replies.__anext__()).body)
            assert answer.body.output == "noted c"
    assert runs == ["a", "b", "c"]
