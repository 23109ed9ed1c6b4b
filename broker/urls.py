"""Pick a broker implementation from a URL: memory://, amqp(s)://, mns(s)://."""

from __future__ import annotations

from urllib.parse import urlsplit

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import UnknownBroker


def open_broker(url: str) -> Broker:
    """A (not yet connected) broker for `url`; the scheme picks the implementation."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from agentqueue.broker.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in ("amqp", "amqps"):
        from agentqueue.broker.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(url)
    if scheme in ("mns", "mnss"):
        from agentqueue.broker.mns import MNSBroker

        return MNSBroker(url)
    raise UnknownBroker(
        f"no broker for URL scheme {scheme!r} in {redact_url(url)!r};"
        " use memory://, amqp://, amqps:// or mns://"
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
