"""Several RabbitMQ nodes behind one robust connection: `amqp://…:5672/,amqp://…:5673/`.

aio-pika's `RobustConnection` reconnects to the one URL it was given, so a client of a cluster
whose node dies would knock on that dead node for ever. `connect_nodes` opens the connection to
the first node that answers, and the connection moves on to the next node (round robin) before
every reconnect attempt, so it finds a live node as long as one stands.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import aio_pika
import aio_pika.abc
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from agentqueue.broker.urls import redact_url, split_url_list


def split_node_urls(url: str) -> list[str]:
    """The node URLs of a comma-separated list (one URL gives a list of one)."""
    urls = split_url_list(url)
    if not urls:
        raise ValueError(
            f"broker URL {redact_url(url)!r} names no node; give amqp://host/ or a"
            " comma-separated list"
        )
    return urls


class NodeRotatingConnection(aio_pika.RobustConnection):
    """A robust connection that tries the next node's URL on each reconnect attempt."""

    def __init__(self, url: str, *, node_urls: Sequence[str], **kwargs: Any) -> None:
        super().__init__(URL(url), **kwargs)
        # Set after super().__init__, whose own `transport = None` must not move us on.
        self._node_urls = [URL(u) for u in node_urls]
        self._next_node = 0

    @property  # type: ignore[override]
    def transport(self) -> Any:
        return self.__dict__.get("_node_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        # aio-pika clears the transport right before each (re)connect attempt: the one hook
        # it offers where the URL of the next attempt can still be chosen.
        nodes = self.__dict__.get("_node_urls")
        if value is None and nodes:
            self.url = nodes[self._next_node % len(nodes)]
            self._next_node += 1
        self.__dict__["_node_transport"] = value


async def connect_nodes(
    urls: Sequence[str], *, ssl_context: ssl.SSLContext | None = None
) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection to the first of `urls` that answers, failing over to the others."""
    if len(urls) == 1:
        return await aio_pika.connect_robust(urls[0], ssl_context=ssl_context)
    errors: list[str] = []
    for i, url in enumerate(urls):
        # Start at the node that answered, then go round the others in their given order.
        ordered = [*urls[i:], *urls[:i]]
        connection = NodeRotatingConnection(url, node_urls=ordered, ssl_context=ssl_context)
        try:
            await connection.connect()
        except CONNECTION_EXCEPTIONS as exc:
            errors.append(f"{redact_url(url)}: {exc}")
            await connection.close()
            continue
        return connection
    raise ConnectionError(
        f"no RabbitMQ node answered ({'; '.join(errors)}); are any of them running?"
    )
