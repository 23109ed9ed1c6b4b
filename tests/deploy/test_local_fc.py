"""The FC emulator: MNS triggers invoking the FC handler in instance processes on a local MNS."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import TOOLS, Topology
from agentqueue.deploy.local.fc import LocalFC, TriggerConfig
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import Envelope, ToolCall, ToolResult, encode, new_id

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def tool_call(session: str, name: str, arguments: dict, reply_to: str) -> Envelope:
    event_id = new_id()
    return Envelope(
        id=event_id,
        session_id=session,
        correlation_id=event_id,
        reply_to=reply_to,
        body=ToolCall(name=name, arguments=arguments, call_id=event_id),
        created_at=time.time(),
    )


def function_env(mns_url: str, topology: Topology, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "APP": "tests.apps.fc_tools:app",
        "BROKER": mns_url,
        "STORE": f"sqlite:///{tmp_path}/sessions.db",
        "NAMESPACE": topology.namespace,
        "PARTITIONS": str(topology.partitions),
        "TOOL_PARTITIONS": str(topology.tool_partitions),
        "TEST_LOG": str(tmp_path / "effects.log"),
        "LEASE_TTL": "1",  # a killed instance's session lease runs out quickly
        **extra,
    }
    return {f"AGENTQUEUE_{k}": v for k, v in env.items()}


def effects(tmp_path: Path) -> list[tuple[str, int]]:
    log = tmp_path / "effects.log"
    if not log.exists():
        return []
    return [(s, int(n)) for s, n, _ in (line.split() for line in log.read_text().splitlines())]


async def publish_and_collect(
    broker: MNSBroker,
    fc: LocalFC,
    topology: Topology,
    envelopes: list[Envelope],
    reply_queue: str,
    timeout: float = 60.0,
) -> dict[str, Envelope]:
    """Publish every envelope, run the emulator, return the first reply to each."""
    router = ReplyRouter(broker, reply_queue)
    inboxes = {e.id: router.expect(e.id) for e in envelopes}
    for envelope in envelopes:
        await broker.publish(topology.route(envelope), encode(envelope))
    got: dict[str, Envelope] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(router.run)
        await tg.start(fc.run)
        with anyio.fail_after(timeout):
            for event_id, inbox in inboxes.items():
                got[event_id] = await inbox.get()
        tg.cancel_scope.cancel()
    return got


async def test_each_session_keeps_its_order_with_four_instances(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"o{new_id()[:6]}", partitions=1, tool_partitions=4)
    reply_queue = topology.reply_queue("test")
    sessions = [f"s{i:02d}" for i in range(20)]
    envelopes = [
        tool_call(s, "record", {"session": s, "seq": n}, reply_queue)
        for n in range(10)
        for s in sessions
    ]
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        fc = LocalFC(
            broker,
            topology,
            env=function_env(mns_url, topology, tmp_path),
            max_instances=4,
            trigger=TriggerConfig(batch_size=10, batch_window=0.2),
        )
        got = await publish_and_collect(broker, fc, topology, envelopes, reply_queue)
    assert all(isinstance(r.body, ToolResult) and r.body.ok for r in got.values())
    seen: dict[str, list[int]] = defaultdict(list)
    for session, seq in effects(tmp_path):
        seen[session].append(seq)
    assert {s: seen[s] for s in sessions} == {s: list(range(10)) for s in sessions}
    assert fc.stats.cold_starts <= 4 and fc.stats.warm_invocations > 0


async def test_an_instance_killed_mid_batch_is_retried_and_each_event_takes_effect_once(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"k{new_id()[:6]}", partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    names = ["record", "record", "crash_once", "record", "record"]
    envelopes = [
        tool_call("s", name, {"session": "s", "seq": n}, reply_queue)
        for n, name in enumerate(names)
    ]
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        fc = LocalFC(
            broker,
            topology,
            env=function_env(mns_url, topology, tmp_path),
            max_instances=2,
            trigger=TriggerConfig(batch_size=10, batch_window=0.5, retry_base=0.2),
        )
        got = await publish_and_collect(broker, fc, topology, envelopes, reply_queue)
    assert [r.body.output for r in got.values()] == [f"s:{n}" for n in range(5)]  # type: ignore[union-attr]
    assert effects(tmp_path) == [("s", n) for n in range(5)]  # s:0 and s:1 were not run again
    assert fc.stats.failed_invocations >= 1 and fc.stats.cold_starts >= 2


async def test_a_poison_event_is_dead_lettered_after_the_delivery_limit_and_its_partition_moves_on(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"p{new_id()[:6]}", partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    poison = tool_call("s", "poison", {}, reply_queue)
    after = tool_call("s", "record", {"session": "s", "seq": 1}, reply_queue)
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        fc = LocalFC(
            broker,
            topology,
            env=function_env(mns_url, topology, tmp_path, DELIVERY_LIMIT="2"),
            max_instances=1,
            trigger=TriggerConfig(batch_size=10, batch_window=0.5, retry_base=0.2),
        )
        got = await publish_and_collect(broker, fc, topology, [poison, after], reply_queue)
        dead = await broker.get(topology.dead_letter_queue)
        assert dead is not None
        await dead.ack()
    assert isinstance(got[poison.id].body, ToolResult) and not got[poison.id].body.ok
    assert got[after.id].body.output == "s:1"  # type: ignore[union-attr]
    record = read_dead_letter(dead.body, topology.dead_letter_queue)
    assert record.envelope_id == poison.id and record.attempts == 3
    assert "delivered 3 times" in record.reason
    assert fc.stats.failed_invocations == 2


async def test_provisioned_instances_are_initialised_before_the_first_event_and_serve_it(
    mns_url: str, tmp_path: Path
) -> None:
    topology = Topology(f"w{new_id()[:6]}", partitions=1, tool_partitions=2)
    reply_queue = topology.reply_queue("test")
    sessions = ["a", "b", "c", "d"]
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        await broker.declare_reply_queue(reply_queue)
        fc = LocalFC(
            broker,
            topology,
            env=function_env(mns_url, topology, tmp_path),
            max_instances=3,
            provisioned=2,
            trigger=TriggerConfig(batch_size=1, batch_window=0.05),
        )
        router = ReplyRouter(broker, reply_queue)
        async with anyio.create_task_group() as tg:
            await tg.start(router.run)
            await tg.start(fc.run)  # returns once the warm pool is up
            warm = fc.provisioned_instances
            published = time.monotonic()
            envelopes = [
                tool_call(s, "record", {"session": s, "seq": 0}, reply_queue) for s in sessions
            ]
            inboxes = [router.expect(e.id) for e in envelopes]
            for envelope in envelopes:
                await broker.publish(topology.route(envelope), encode(envelope))
            with anyio.fail_after(60):
                replies = [await inbox.get() for inbox in inboxes]
            tg.cancel_scope.cancel()
    assert all(isinstance(r.body, ToolResult) and r.body.ok for r in replies)
    assert len(warm) == 2 and all(ready < published for ready in warm.values())
    served_by = {
        int(pid)
        for _, _, pid in (
            line.split() for line in (tmp_path / "effects.log").read_text().splitlines()
        )
    }
    assert served_by <= set(warm)  # no event waited for an instance to start
    assert fc.stats.cold_starts == 0 and fc.stats.warm_invocations == len(sessions)
    assert len(fc.stats.provisioned_ms) == 2


async def test_a_batch_goes_to_the_function_when_its_window_ends_not_when_a_long_poll_gives_up(
    local_mns: LocalMNS, mns_url: str, tmp_path: Path
) -> None:
    # The trigger polls with 30 s long polls and a window of 50 ms; nothing follows the one
    # tool call, so its batch's window ends while a poll still waits for more. The answer
    # must come then, not once that poll gives up empty 30 s later.
    slow_polls = f"mns://{local_mns.host}:{local_mns.port}?wait=30"
    topology = Topology(f"b{new_id()[:6]}", partitions=1, tool_partitions=1)
    reply_queue = topology.reply_queue("test")
    call = tool_call("s", "record", {"session": "s", "seq": 0}, reply_queue)
    async with MNSBroker(slow_polls) as trigger_side, MNSBroker(mns_url) as client:
        await client.declare(topology)
        await client.declare_reply_queue(reply_queue)
        fc = LocalFC(
            trigger_side,
            topology,
            env=function_env(mns_url, topology, tmp_path),
            max_instances=1,
            provisioned=1,
            trigger=TriggerConfig(batch_size=10, batch_window=0.05),
            queues=topology.queues(TOOLS),  # one trigger, so one poll to end when stopping
        )
        router = ReplyRouter(client, reply_queue)
        inbox = router.expect(call.id)
        async with anyio.create_task_group() as tg:
            await tg.start(router.run)
            async with anyio.create_task_group() as emulator:
                await emulator.start(fc.run)  # returns once the instance is warm
                await client.publish(topology.route(call), encode(call))
                with anyio.fail_after(20):
                    reply = await inbox.get()
                emulator.cancel_scope.cancel()
                # Stopping waits for the poll in flight: a message ends it now, not in 30 s.
                wake = tool_call("s", "record", {"session": "s", "seq": 1}, reply_queue)
                with anyio.CancelScope(shield=True):
                    await client.publish(topology.route(wake), encode(wake))
            tg.cancel_scope.cancel()
    assert isinstance(reply.body, ToolResult) and reply.body.output == "s:0"
    assert effects(tmp_path) == [("s", 0)]


def test_a_warm_pool_larger_than_the_instance_limit_is_refused_naming_both(mns_url: str) -> None:
    with pytest.raises(ValueError) as refused:
        LocalFC(MNSBroker(mns_url), Topology("x"), env={}, max_instances=2, provisioned=3)
    assert str(refused.value) == (
        "provisioned instances 3 must be 0 to max_instances (2): raise max_instances or provision"
        " fewer"
    )
