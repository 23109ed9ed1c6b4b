"""Private RabbitMQ and Redis servers: real connections, quorum queues, restarts and crashes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
import redis
from pamqp.commands import Basic

from agentqueue.deploy.local.process import ServerStartError, marked_processes
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.deploy.local.rabbitmq_cluster import LocalRabbitMQCluster
from agentqueue.deploy.local.redis import LocalRedis
from tests.waiting import wait_until

pytestmark = pytest.mark.broker

QUORUM = {"x-queue-type": "quorum", "x-single-active-consumer": True}

# RabbitMQ 3.10 keeps which Ra server belongs to a quorum queue in a DETS table written
# 500 ms after its last change. A node SIGKILLed sooner after the queue is declared comes
# back with a new empty Ra server for it and the confirmed messages are gone, so crash
# tests give a new queue this long before they kill.
RA_DIRECTORY_FLUSH = 1.0

# Runs a node in a separate owner process: "serve" keeps it, "crash" leaves it behind by
# starting it off the main thread (no parent-death signal) and exiting without atexit.
OWNER = """
import os, sys, threading, time
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
node = LocalRabbitMQ(sys.argv[1])
if sys.argv[2] == "crash":
    starter = threading.Thread(target=node.start)
    starter.start()
    starter.join()
    print(node.port, flush=True)
    os._exit(0)
node.start()
print(node.port, flush=True)
time.sleep(600)  # the owner stays up until the test kills it
"""


def run_owner(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir), mode], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    assert owner.stdout.readline().strip().isdigit(), "the owner process failed to start its node"
    return owner


async def publish_confirmed(url: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        for body in bodies:
            # With confirms on, publish returns only once the broker acked the message.
            ack = await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
            )
            assert isinstance(ack, Basic.Ack), ack  # not a nack: the broker took it


async def consume(url: str, queue: str, count: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(60):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=count)
            declared = await channel.declare_queue(queue, durable=True, arguments=QUORUM)
            async with declared.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == count:
                        break
    return got


@pytest.fixture
def private_rabbitmq(rabbitmq: LocalRabbitMQ, tmp_path: Path) -> Iterator[LocalRabbitMQ]:
    """A node of the test's own to restart or crash; skips or fails as the session node does."""
    with LocalRabbitMQ(tmp_path / "node") as node:
        yield node


@pytest.fixture
def private_redis(redis_server: LocalRedis, tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis server of the test's own to restart; skips or fails as the session one does."""
    with LocalRedis(tmp_path / "redis") as server:
        yield server


async def test_a_confirmed_persistent_message_goes_through_a_single_active_consumer_quorum_queue(
    rabbitmq_url: str,
) -> None:
    await publish_confirmed(rabbitmq_url, "round-trip", [b"one", b"two", b"three"])
    assert await consume(rabbitmq_url, "round-trip", 3) == [b"one", b"two", b"three"]


async def test_rabbitmqctl_sees_the_quorum_queue_declared_over_amqp(
    rabbitmq: LocalRabbitMQ,
) -> None:
    await publish_confirmed(rabbitmq.url, "seen-by-ctl", [b"x"])
    listed = json.loads(rabbitmq.ctl("list_queues", "name", "type", "--formatter", "json"))
    assert {"name": "seen-by-ctl", "type": "quorum"} in listed


async def test_a_graceful_restart_keeps_the_messages_of_a_durable_quorum_queue(
    private_rabbitmq: LocalRabbitMQ,
) -> None:
    node = private_rabbitmq
    url = node.url
    await publish_confirmed(url, "kept", [b"a", b"b"])
    node.restart()
    assert node.url == url
    assert await consume(url, "kept", 2) == [b"a", b"b"]


async def test_confirmed_quorum_messages_survive_a_sigkill_of_the_node(
    private_rabbitmq: LocalRabbitMQ,
) -> None:
    node = private_rabbitmq
    await publish_confirmed(node.url, "crash-safe", [b"a"])
    await asyncio.sleep(RA_DIRECTORY_FLUSH)
    await publish_confirmed(node.url, "crash-safe", [b"b", b"c"])
    node.kill()  # right after the confirms
    assert not node.running
    assert marked_processes(node.data_dir) == {}
    node.start()
    assert await consume(node.url, "crash-safe", 3) == [b"a", b"b", b"c"]


def test_a_node_left_running_by_a_crashed_owner_is_replaced_on_start(
    rabbitmq: LocalRabbitMQ, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    owner = run_owner(data_dir, "crash")
    owner.wait()
    leftovers = marked_processes(data_dir.resolve())
    assert leftovers, "the crashed owner left no node behind"
    with LocalRabbitMQ(data_dir) as node:
        assert not set(leftovers) & set(marked_processes(node.data_dir))
        assert "Status of node" in node.ctl("status")


def test_a_node_belongs_to_its_owner_process_and_dies_with_it(
    rabbitmq: LocalRabbitMQ, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node"
    owner = run_owner(data_dir, "serve")
    try:
        with pytest.raises(ServerStartError, match="live process"):
            LocalRabbitMQ(data_dir).start()
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: not marked_processes(data_dir.resolve()), 30, "the orphaned node exiting")


@pytest.mark.slow
async def test_a_three_node_cluster_keeps_a_quorum_queue_when_its_leader_is_killed(
    rabbitmq: LocalRabbitMQ, tmp_path: Path
) -> None:
    with LocalRabbitMQCluster(tmp_path / "cluster", nodes=3) as cluster:
        names = sorted(node.node_name for node in cluster.nodes)
        assert sorted(cluster.running_nodes(0)) == names
        # A quorum queue's leader starts on the node the client declared it through.
        await publish_confirmed(cluster.urls[0], "replicated", [b"a", b"b"])
        await asyncio.sleep(RA_DIRECTORY_FLUSH)
        cluster.kill_node(0)
        assert await consume(cluster.urls[1], "replicated", 2) == [b"a", b"b"]
        cluster.start_node(0)
        wait_until(lambda: sorted(cluster.running_nodes(1)) == names, 30, "node 0 rejoining")


def test_redis_answers_ping(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True


def test_redis_keeps_a_key_across_restart(private_redis: LocalRedis) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        client.set("kept", "yes")
    private_redis.restart()
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.get("kept") == b"yes"
