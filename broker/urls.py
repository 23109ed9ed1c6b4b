"""Pick a broker implementation from a URL: memory://, amqp(s)://, mns(s)://."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from agentqueue.broker.base import Broker
from agentqueue.broker.errors import UnknownBroker
from agentqueue.protocol.signing import KeyRing

SIGNING_KEYS_ENV = "AGENTQUEUE_SIGNING_KEYS"


def key_ring(spec: str | None) -> KeyRing | None:
    """The key ring `spec` names (`id:secret,…`, or `@/path/to/file` holding that); None if blank.

    `Settings.signing_keys` is where a spec comes from (AGENTQUEUE_SIGNING_KEYS).
    """
    value = (spec or "").strip()
    if not value:
        return None
    if value.startswith("@"):
        value = Path(value[1:]).read_text().strip()
    return KeyRing.parse(value)


def open_broker(url: str, *, signing: KeyRing | None = None) -> Broker:
    """A (not yet connected) broker for `url`; the scheme picks the implementation.

    With `signing`, every envelope published through the broker is signed, and consumers on it
    refuse unsigned ones. `Settings.open_broker()` passes the configured keys.
    """
    broker = _open(url)
    broker.signing = signing
    return broker


# Broker implementations by URL scheme, as "module:class", imported only when used (aio-pika
# and the MNS SDK are not loaded by a process that never opens such a broker).
BROKERS: dict[str, str] = {
    "memory": "agentqueue.broker.memory:MemoryBroker",
    "amqp": "agentqueue.broker.rabbitmq:RabbitMQBroker",
    "amqps": "agentqueue.broker.rabbitmq:RabbitMQBroker",
    "mns": "agentqueue.broker.mns:MNSBroker",
    "mnss": "agentqueue.broker.mns:MNSBroker",
}


def _open(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    target = BROKERS.get(scheme)
    if target is None:
        raise UnknownBroker(
            f"no broker for URL scheme {scheme!r} in {redact_url(url)!r};"
            " use memory://, amqp://, amqps:// or mns://"
        )
    module, _, name = target.partition(":")
    # Each broker class is made from its URL alone (the base class takes no arguments).
    broker_class: Callable[[str], Broker] = getattr(importlib.import_module(module), name)
    return broker_class(url)


# A comma starts the next URL of a list only when a scheme follows it; a comma anywhere else
# (in a password, a query) is part of the URL it is in.
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.\-]*://|\s*$)")
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://")
# Query parameters that carry credentials in DSNs (redis `?password=`, `?access_key=`, …).
_SECRET_PARAM = re.compile(
    r"(?i)^(password|passwd|pwd|pass|secret|token|auth|sig|signature|credentials?|key"
    r"|.*[_-](key|secret|token|password))$"
)


def split_url_list(url: str) -> list[str]:
    """The URLs of a comma-separated list such as a cluster's nodes (one URL: a list of one)."""
    return [part.strip() for part in _NEXT_URL.split(url) if part.strip()]


def redact_url(url: str) -> str:
    """The URL (or comma-separated list of URLs, or DSN) with every password shown as ***.

    Works on text that is not a valid URL too (a password with `@`, `/`, `,` or `%` in it, an
    unknown scheme, no scheme at all): the password is everything between the user name's `:`
    and the last `@`, so an ambiguous URL loses more to *** than it should, never less.
    Secret-looking query parameters (`password=`, `token=`, `*_key=`, …) are masked too.
    """
    parts = _NEXT_URL.split(url)
    if len(parts) > 1:
        return ",".join(_redact_one(part) for part in parts)
    return _redact_one(url)


def _redact_one(url: str) -> str:
    scheme = _SCHEME.match(url)
    head, rest = (url[: scheme.end()], url[scheme.end() :]) if scheme else ("", url)
    at = rest.rfind("@")
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:***{rest[at:]}"
    query = rest.find("?")
    if query >= 0:
        rest = rest[: query + 1] + _redact_query(rest[query + 1 :])
    return head + rest


def _redact_query(query: str) -> str:
    fragment = ""
    if "#" in query:
        query, hash_, tail = query.partition("#")
        fragment = hash_ + tail
    shown = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        shown.append(f"{name}=***" if eq and value and _SECRET_PARAM.match(name) else item)
    return "&".join(shown) + fragment
