"""Errors a broker raises; all are `BrokerError`s, itself an `AgentQueueError`."""

from __future__ import annotations

from agentqueue.protocol.errors import AgentQueueError


class BrokerError(AgentQueueError):
    """A broker operation failed."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached or the connection dropped; the message says which URL."""


class MessageTooLarge(BrokerError, ValueError):
    """A message is over the broker's size limit; it was not published."""


class QueueMissing(BrokerError):
    """No queue by that name: the topology is not declared, or a reply queue's owner is gone
    (or, reconnecting, has not declared it again yet)."""


class QueueUnavailable(BrokerConnectionError):
    """The broker refused the message for now (a publisher nack from a replicated queue without
    a leader, e.g. while a cluster node is down); publishing it again shortly works."""


class QueueFull(BrokerError):
    """The queue refused the message because it is at its length limit; retry later."""


class PartitionMismatch(BrokerError, ValueError):
    """The namespace's queues on the broker have another partition count than this process was
    given: requests would go to partitions no worker serves (or workers would miss some)."""


class UnknownBroker(BrokerError, ValueError):
    """A broker URL whose scheme no broker handles."""
