"""The partition count a namespace already has, read off its queues, and the check every client
and worker runs before declaring them.

The partition queues are the record: `aq-requests-0` … `aq-requests-15` exist, so the namespace
has 16 request partitions, whoever declared them. A process started with another count would
publish to queues no worker consumes (or serve only some of them), so it is refused before it
declares anything. Reading the count costs two passive look-ups per family when it matches;
only a mismatch searches for the real count, to name it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentqueue.broker.errors import PartitionMismatch, QueueMissing
from agentqueue.broker.topology import REQUESTS, TOOLS, Topology

if TYPE_CHECKING:  # base.py runs the check in `declare`
    from agentqueue.broker.base import Broker

MAX_PARTITIONS = 1024  # Topology's own bound
_OPTION = {
    REQUESTS: "--partition-count (AGENTQUEUE_PARTITIONS)",
    TOOLS: "--tool-partition-count (AGENTQUEUE_TOOL_PARTITIONS)",
}


async def _exists(broker: Broker, topology: Topology, family: str, partition: int) -> bool:
    try:
        await broker.stats(topology.queue(family, partition))
    except QueueMissing:
        return False
    return True


async def existing_partitions(broker: Broker, topology: Topology, family: str) -> int | None:
    """How many partition queues `family` has on the broker; None when it has none yet."""
    n = topology.family_size(family)
    if await _exists(broker, topology, family, n - 1):
        if n == MAX_PARTITIONS or not await _exists(broker, topology, family, n):
            return n  # the common case: the count matches
    elif not await _exists(broker, topology, family, 0):
        return None  # nothing declared yet
    # Queues 0..count-1 exist: find count, the first partition with no queue (1 <= count).
    low, high = 1, 1  # _exists(low - 1) holds; high probes upwards
    while high < MAX_PARTITIONS and await _exists(broker, topology, family, high):
        low, high = high + 1, min(high * 2, MAX_PARTITIONS)
    if high == MAX_PARTITIONS and await _exists(broker, topology, family, high - 1):
        return MAX_PARTITIONS
    while low < high:  # invariant: queue low-1 exists, queue high does not
        middle = (low + high) // 2
        if await _exists(broker, topology, family, middle):
            low = middle + 1
        else:
            high = middle
    return low


async def check_partitions(broker: Broker, topology: Topology) -> None:
    """Raise `PartitionMismatch` if the namespace's queues have other partition counts."""
    for family in (REQUESTS, TOOLS):
        found = await existing_partitions(broker, topology, family)
        wanted = topology.family_size(family)
        if found is None or found == wanted:
            continue
        raise PartitionMismatch(
            f"namespace {topology.namespace!r} has {found} {family} partitions on this broker"
            f" (queues {topology.queue(family, 0)} … {topology.queue(family, found - 1)}"
            f" exist), but this process was given {wanted}: its {family} would go to partitions"
            f" no worker serves. Start it with {_OPTION[family]} = {found}, or drain and delete"
            f" the namespace's queues to change the count"
        )
