"""Queue names of one deployment: partition families, dead letters, replies, under a namespace."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentqueue.protocol.messages import Envelope
from agentqueue.protocol.partitioning import partition_for

REQUESTS = "requests"
TOOLS = "tools"
# The partition queues' `x-delivery-limit`: a crash-loop guard only, far above any count of
# worker deaths. Poison is caught by the workers, which count an event's own unfinished runs in
# the session store (`delivery_limit`); a broker redelivery also counts prefetched events that
# never started, and healthy ones would be dead-lettered by kills alone.
BROKER_DELIVERY_LIMIT = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,40}$")


@dataclass(frozen=True, slots=True)
class Topology:
    """Where each kind of event lives. Names use only letters, digits and '-' so MNS takes them."""

    namespace: str = "aq"
    partitions: int = 16
    tool_partitions: int = 16
    delivery_limit: int = 20  # unfinished runs of one event before workers dead-letter it
    max_length: int | None = None  # partition queue length past which publishes are refused

    def __post_init__(self) -> None:
        if not _NAME.match(self.namespace):
            raise ValueError(
                f"namespace {self.namespace!r} must be 1-41 letters, digits or '-'"
                " (it prefixes every queue name)"
            )
        for field, n in (
            ("partitions", self.partitions),
            ("tool_partitions", self.tool_partitions),
        ):
            if not 1 <= n <= 1024:
                raise ValueError(f"{field} must be between 1 and 1024, got {n}")

    @property
    def broker_delivery_limit(self) -> int:
        """The partition queues' `x-delivery-limit`: well above the workers' own limit."""
        return max(BROKER_DELIVERY_LIMIT, 50 * self.delivery_limit)

    def family_size(self, family: str) -> int:
        """How many partitions the `requests` or `tools` family has."""
        return self.partitions if family == REQUESTS else self.tool_partitions

    def queue(self, family: str, partition: int) -> str:
        """The queue of one partition, e.g. `aq-requests-3`."""
        return f"{self.namespace}-{family}-{partition}"

    def queues(self, family: str) -> list[str]:
        """Every partition queue of a family, in partition order."""
        return [self.queue(family, p) for p in range(self.family_size(family))]

    def declaration_order(self, family: str) -> list[int]:
        """The partitions of a family in the order brokers create their queues: the last one
        first. A process that checks the namespace's count while another declares it then sees
        either no queue or the last one (the count), never a first few that look like fewer."""
        n = self.family_size(family)
        return [n - 1, *range(n - 1)]

    @property
    def dead_letter_queue(self) -> str:
        """The one queue that holds dead letters with their reasons."""
        return f"{self.namespace}-dead-letters"

    def reply_queue(self, owner: str) -> str:
        """A reply queue for one client, worker or batch."""
        return f"{self.namespace}-reply-{owner}"

    def route(self, envelope: Envelope) -> str:
        """The partition queue an envelope is published to, keyed by its partition key."""
        family = TOOLS if envelope.type == "tool_call" else REQUESTS
        n = self.family_size(family)
        return self.queue(family, partition_for(envelope.partition_key, n))

    def partition_of(self, queue: str) -> tuple[str, int] | None:
        """(family, partition) for a partition queue name, else None."""
        prefix = f"{self.namespace}-"
        if not queue.startswith(prefix):
            return None
        family, _, index = queue[len(prefix) :].rpartition("-")
        if family in (REQUESTS, TOOLS) and index.isdigit():
            return family, int(index)
        return None
