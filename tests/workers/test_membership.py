"""Heartbeats: signed when the broker has keys, the rest ignored and counted; the dead pruned."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest

from agentqueue.broker.memory import MemoryBroker
from agentqueue.protocol import new_id
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.membership import Heartbeat, Membership

KEYS = KeyRing([("k1", b"membership-secret-0123")])
OTHER_KEYS = KeyRing([("k1", b"another-secret-456789")])
TOPIC = "m-control"
ELIGIBLE = {"requests": ["m-requests-0", "m-requests-1"]}


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def members(
    url: str, *names: str, signing: KeyRing | None, prune_after: float | None = None
) -> AsyncIterator[list[Membership]]:
    """One running Membership per name, each on its own connection to the broker at `url`."""
    async with anyio.create_task_group() as tg:
        found = []
        for name in names:
            broker = MemoryBroker(url)
            broker.signing = signing
            await broker.connect()
            member = Membership(
                broker, TOPIC, name, ELIGIBLE, interval=0.05, expiry=1.0, prune_after=prune_after
            )
            await tg.start(member.run)
            found.append(member)
        yield found
        tg.cancel_scope.cancel()


@asynccontextmanager
async def outsider(url: str, signing: KeyRing | None = None) -> AsyncIterator[MemoryBroker]:
    """A connection to the same broker that broadcasts what a test makes up."""
    broker = MemoryBroker(url)
    broker.signing = signing
    async with broker:
        yield broker


def heartbeat(worker: str, at: float | None = None) -> bytes:
    return msgspec.json.encode(Heartbeat(worker, ELIGIBLE, at=time.time() if at is None else at))


async def test_workers_with_keys_hear_each_others_signed_heartbeats() -> None:
    url = f"memory://m-{new_id()[:8]}"
    async with members(url, "a", "b", signing=KEYS) as (a, b):
        await wait_for(lambda: "b" in a.live() and "a" in b.live())
        assert set(a.assignment().values()) == {"a", "b"}
    assert not a.ignored and not b.ignored


async def test_an_unsigned_heartbeat_is_ignored_with_a_counted_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"memory://m-{new_id()[:8]}"
    caplog.set_level(logging.WARNING, "agentqueue.membership")
    async with members(url, "a", signing=KEYS) as (a,), outsider(url) as intruder:
        for _ in range(3):
            await intruder.broadcast(TOPIC, heartbeat("intruder"))
        await wait_for(lambda: a.ignored["unsigned"] == 3)
        assert "intruder" not in a.live() and "intruder" not in a.peers
        assert set(a.assignment().values()) == {"a"}
    warnings = [r.getMessage() for r in caplog.records if "ignored a heartbeat" in r.getMessage()]
    assert warnings == [  # the first of a kind is logged; the rest are counted
        "ignored a heartbeat on m-control (unsigned, 1 so far): unsigned envelope refused:"
        " this worker runs only envelopes signed with one of its keys (k1)"
    ]


async def test_a_heartbeat_signed_with_another_secret_is_ignored_as_forged() -> None:
    url = f"memory://m-{new_id()[:8]}"
    async with members(url, "a", signing=KEYS) as (a,), outsider(url) as intruder:
        await intruder.broadcast(TOPIC, OTHER_KEYS.sign(heartbeat("intruder")))
        await wait_for(lambda: a.ignored["forged"] == 1)
        assert "intruder" not in a.peers


async def test_an_old_or_replayed_signed_heartbeat_is_ignored() -> None:
    url = f"memory://m-{new_id()[:8]}"
    async with members(url, "a", signing=KEYS) as (a,), outsider(url) as peer:
        await peer.broadcast(TOPIC, KEYS.sign(heartbeat("old", at=time.time() - 120)))
        await wait_for(lambda: a.ignored["stale"] == 1)
        fresh = KEYS.sign(heartbeat("c"))
        await peer.broadcast(TOPIC, fresh)
        await wait_for(lambda: "c" in a.live())
        await peer.broadcast(TOPIC, fresh)  # the same bytes again: a replay
        await wait_for(lambda: a.ignored["replayed"] == 1)
    assert "old" not in a.peers


async def test_without_keys_unsigned_heartbeats_are_heard_as_before() -> None:
    url = f"memory://m-{new_id()[:8]}"
    async with members(url, "a", "b", signing=None) as (a, b):
        await wait_for(lambda: "b" in a.live() and "a" in b.live())
    assert not a.ignored


async def test_a_dead_peer_leaves_the_live_set_and_is_then_forgotten() -> None:
    url = f"memory://m-{new_id()[:8]}"
    async with (
        members(url, "a", signing=KEYS, prune_after=1.5) as (a,),
        outsider(url, KEYS) as peer,
    ):
        await peer.broadcast(TOPIC, KEYS.sign(heartbeat("gone")))
        await wait_for(lambda: "gone" in a.live())
        # It sends nothing more: it drops out of the live set after `expiry`, and out of
        # memory after `prune_after` (the expiry task prunes every half interval).
        await wait_for(lambda: "gone" not in a.live())
        assert "gone" in a.peers
        await wait_for(lambda: "gone" not in a.peers)


def test_the_default_prune_window_outlasts_the_age_a_replay_could_still_pass() -> None:
    member = Membership(MemoryBroker("memory://m-defaults"), TOPIC, "a", ELIGIBLE)
    assert member.prune_after == member.max_age == 30.0
