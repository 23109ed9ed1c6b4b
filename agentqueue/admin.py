"""`agentqueue status` and `agentqueue dlq list|show|replay`: look at queues, fix dead letters."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TextIO

import anyio
import msgspec

from agentqueue.broker.base import Broker, Delivery, read_dead_letter
from agentqueue.broker.partition_check import existing_partitions
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology
from agentqueue.client import Client, RequestHandle
from agentqueue.protocol.admission import Refusal, admit
from agentqueue.protocol.codec import decode, encode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.protocol.ids import new_id
from agentqueue.protocol.messages import DeadLetter, Envelope
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.membership import Heartbeat


async def owners(broker: Broker, topology: Topology, listen_for: float = 2.5) -> dict[str, str]:
    """Queue -> worker id, from the workers' heartbeats heard within `listen_for` seconds."""
    found: dict[str, str] = {}
    decoder = msgspec.json.Decoder(Heartbeat)
    subscription = await broker.listen(f"{topology.namespace}-control")
    with anyio.move_on_after(listen_for):
        async for delivery in subscription:
            try:
                heartbeat = decoder.decode(delivery.body)
            except msgspec.MsgspecError:
                continue
            for queue in heartbeat.owned:
                if not heartbeat.leaving:
                    found[queue] = heartbeat.worker_id
    await subscription.close()
    return found


async def print_status(broker: Broker, topology: Topology, out: TextIO) -> None:
    """Per partition: depth, un-acked, consumers and the worker active on it; then the queues
    that hold messages no one consumes, and the dead letters."""
    active = await owners(broker, topology)
    print(f"{'queue':<28} {'ready':>7} {'unacked':>8} {'consumers':>10}  active worker", file=out)
    stuck: list[str] = []
    for family in (REQUESTS, TOOLS):
        found = await existing_partitions(broker, topology, family) or 0
        if found != topology.family_size(family):
            print(
                f"({family}: the namespace has {found} partitions, not"
                f" {topology.family_size(family)} as given; showing its {found})",
                file=out,
            )
        for partition in range(found):
            queue = topology.queue(family, partition)
            stats = await broker.stats(queue)
            unacked = "-" if stats.unacked is None else str(stats.unacked)
            owner = active.get(queue, "-" if stats.consumers == 0 else "(no heartbeat)")
            print(
                f"{queue:<28} {stats.ready:>7} {unacked:>8} {stats.consumers:>10}  {owner}",
                file=out,
            )
            if stats.ready and not stats.consumers:
                stuck.append(f"{queue} ({stats.ready} ready)")
    if stuck:
        print(
            f"\nSTUCK: {len(stuck)} queue(s) hold messages and have no consumer: "
            + ", ".join(stuck)
            + "\n  start a worker that serves them (`agentqueue worker`, default: all partitions)",
            file=out,
        )
    dead = await broker.stats(topology.dead_letter_queue)
    print(f"\ndead letters in {topology.dead_letter_queue}: {dead.ready}", file=out)


@dataclass
class _Held:
    delivery: Delivery
    record: DeadLetter


async def _hold_all(broker: Broker, topology: Topology, limit: int) -> list[_Held]:
    held: list[_Held] = []
    try:
        while len(held) < limit:
            delivery = await broker.get(topology.dead_letter_queue)
            if delivery is None:
                break
            record = read_dead_letter(delivery.body, topology.dead_letter_queue)
            held.append(_Held(delivery, record))
    except BaseException:
        # What was taken goes back, whatever went wrong: a dead letter is never lost to a look.
        with anyio.CancelScope(shield=True):
            await _give_back(held)
        raise
    return held


async def _give_back(held: list[_Held]) -> None:
    for item in held:
        await item.delivery.nack(requeue=True)


def _label(record: DeadLetter) -> str:
    return record.envelope_id or "(no id)"


async def dlq_list(broker: Broker, topology: Topology, out: TextIO, limit: int = 100) -> int:
    """Print one line per dead letter; the queue is left as it was."""
    held = await _hold_all(broker, topology, limit)
    try:
        for i, item in enumerate(held):
            r = item.record
            when = (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.failed_at))
                if r.failed_at
                else "-"
            )
            print(f"{i:>3}  {_label(r):<34} {when}  {r.queue:<22} {r.reason}", file=out)
        if not held:
            print(f"{topology.dead_letter_queue} is empty", file=out)
    finally:
        await _give_back(held)
    return len(held)


async def dlq_show(broker: Broker, topology: Topology, key: str, out: TextIO) -> bool:
    """Print one dead letter (by envelope id or list index) with its reason and envelope."""
    held = await _hold_all(broker, topology, 10_000)
    try:
        for i, item in enumerate(held):
            if key in (str(i), item.record.envelope_id):
                r = item.record
                print(
                    f"reason:   {r.reason}\nqueue:    {r.queue}\n"
                    f"attempts: {r.attempts}\nsession:  {r.session_id}",
                    file=out,
                )
                try:
                    envelope = json.loads(msgspec.json.encode(decode(r.payload)))
                    print(json.dumps(envelope, indent=2, ensure_ascii=False), file=out)
                except ProtocolError:
                    print(
                        f"payload ({len(r.payload)} bytes, not an envelope): {r.payload[:200]!r}",
                        file=out,
                    )
                return True
        return False
    finally:
        await _give_back(held)


@dataclass
class Replayed:
    """A dead letter sent again: its new envelope, and its handle when the replayer waits."""

    envelope: Envelope
    handle: RequestHandle | None


async def dlq_replay(
    broker: Broker,
    topology: Topology,
    key: str | None,
    out: TextIO,
    *,
    caller: Client | None = None,
) -> list[Replayed]:
    """Replay dead letters (one by id/index, or all when `key` is None) as new envelopes.

    Each replay is a new envelope (new id, created now, `replay_of` naming the dead one, the
    same time budget), signed with the broker's current key; the dead letter is removed once it
    is published. Its answer goes to `caller` (a handle per replay is returned, to wait on) or,
    without one, to the original caller's reply queue. A record whose payload is not an
    envelope, or is not signed with one of the current keys while keys are set, stays where it
    is, with the reason why.
    """
    held = await _hold_all(broker, topology, 10_000)
    replayed: list[Replayed] = []
    try:
        for i, item in list(enumerate(held)):
            if key is not None and key not in (str(i), item.record.envelope_id):
                continue
            fresh = replay_envelope(item.record, broker.signing)
            if isinstance(fresh, Refusal):
                print(f"not replayed {_label(item.record)}: {fresh.reason}", file=out)
                continue
            queue = topology.route(fresh)
            handle = None
            if caller is None:
                await broker.publish(queue, encode(fresh))  # signed anew when the broker has keys
            else:
                handle = await caller.resubmit(fresh)
            await item.delivery.ack()
            held.remove(item)
            replayed.append(Replayed(fresh, handle))
            print(f"replayed {_label(item.record)} to {queue} as {fresh.id}", file=out)
    finally:
        await _give_back(held)
    return replayed


async def dlq_remove(broker: Broker, topology: Topology, key: str | None, out: TextIO) -> int:
    """Remove one dead letter (by envelope id or list index), or every one when `key` is None."""
    held = await _hold_all(broker, topology, 10_000)
    removed = 0
    try:
        for i, item in list(enumerate(held)):
            if key is not None and key not in (str(i), item.record.envelope_id):
                continue
            await item.delivery.ack()
            held.remove(item)
            removed += 1
            print(f"removed {_label(item.record)} ({item.record.reason})", file=out)
    finally:
        await _give_back(held)
    return removed


def replay_envelope(
    record: DeadLetter, keys: KeyRing | None, now: float | None = None
) -> Envelope | Refusal:
    """The new envelope that replays a dead letter, or the `Refusal` of its payload."""
    # Verified, never just re-signed: re-signing whatever sits in the dead letters would turn
    # a forged message into one the workers trust. Not checked for freshness: it is old.
    verdict = admit(record.payload, keys, window=None)
    if isinstance(verdict, Refusal):
        return verdict
    now = time.time() if now is None else now
    deadline = verdict.deadline
    if deadline is not None and 0 < verdict.created_at < deadline:
        deadline = now + (deadline - verdict.created_at)  # the time budget it had
    return msgspec.structs.replace(
        verdict,
        id=new_id(),
        correlation_id=verdict.correlation_id or verdict.id,  # its caller still gets the answer
        attempt=1,
        created_at=now,
        deadline=deadline,
        replay_of=verdict.id,
        sig=None,
    )
