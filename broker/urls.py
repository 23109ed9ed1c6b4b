"""Pick a broker implementation from a URL: memory://, amqp(s)://, mns(s)://."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import UnknownBroker
from agentqueue.protocol.signing import KeyRing

SIGNING_KEYS_ENV = "AGENTQUEUE_SIGNING_KEYS"


def signing_keys_from_env() -> KeyRing | None:
    """The key ring in AGENTQUEUE_SIGNING_KEYS (`id:secret,…`, or `@/path/to/file` holding it)."""
    value = os.environ.get(SIGNING_KEYS_ENV, "").strip()
    if not value:
        return None
    if value.startswith("@"):
        value = Path(value[1:]).read_text().strip()
    return KeyRing.parse(value)


def open_broker(url: str, *, signing: KeyRing | bool | None = True) -> Broker:
    """A (not yet connected) broker for `url`; the scheme picks the implementation.

    `signing=True` takes the key ring from AGENTQUEUE_SIGNING_KEYS (none when unset): every
    envelope published through the broker is then signed, and workers refuse unsigned ones.
    """
    broker = _open(url)
    broker.signing = signing_keys_from_env() if signing is True else (signing or None)
    return broker


def _open(url: str) -> Broker:
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
    if "," in url:  # the node list of a RabbitMQ cluster
        return ",".join(redact_url(part) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
