"""Settings for the workers tests start: a topology of the test's own, lone workers."""

from __future__ import annotations

from typing import Any

from agentqueue.broker.topology import Topology
from agentqueue.settings import Settings


def worker_settings(topology: Topology | None = None, **fields: Any) -> Settings:
    """Settings for `topology`; balancing off unless asked (most tests start one worker)."""
    topology = topology or Topology()
    fields.setdefault("balance", False)
    return Settings(
        namespace=topology.namespace,
        partitions=topology.partitions,
        tool_partitions=topology.tool_partitions,
        delivery_limit=topology.delivery_limit,
        queue_max_length=topology.max_length,
        **fields,
    )
