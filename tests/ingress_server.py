"""Run the HTTP ingress for tests: uvicorn behind the guard, on a free port of 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import uvicorn

from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.ingress.app import Ingress
from agentqueue.ingress.auth import WebhookKeys
from agentqueue.ingress.server import Limits, server_config
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.weather import app
from tests.config import worker_settings

SECRET = "whsec_" + base64.b64encode(b"ingress-test-secret-0123456789ab").decode()
KEYS = WebhookKeys.parse(SECRET)


def runtime_request(text: str, **extra: object) -> dict:
    return {"input": [{"role": "user", "content": [{"type": "text", "text": text}]}], **extra}


def webhook_headers(
    body: bytes,
    webhook_id: str | None = None,
    *,
    timestamp: int | None = None,
    keys: WebhookKeys = KEYS,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers of a Standard Webhooks delivery of `body`, signed with `keys`."""
    webhook_id = webhook_id or f"msg_{new_id()}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": content_type,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": keys.sign(webhook_id, timestamp, body),
    }


@contextlib.asynccontextmanager
async def serving(
    ingress: Ingress, limits: Limits | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, int, uvicorn.Server]]:
    """The ingress on a free port of 127.0.0.1, an HTTP client pointed at it, and the server."""
    # The in-process worker may hold the loop for seconds (its first agent imports AgentScope):
    # a long keep-alive stops the server closing a connection the client is reusing meanwhile.
    config = server_config(
        ingress.app,
        "127.0.0.1",
        0,
        limits or Limits(header_timeout=60, body_timeout=60),
        log_level="warning",
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http, port, server
        server.should_exit = True


@contextlib.asynccontextmanager
async def system(
    *, worker: bool = True, limits: Limits | None = None, **options: object
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryBroker, Topology]]:
    """An ingress and (unless `worker=False`) a worker on one embedded broker."""
    topology = Topology(namespace=f"i{new_id()[:6]}", partitions=4, tool_partitions=4)
    broker = MemoryBroker(f"memory://ingress-{new_id()[:8]}")
    async with broker, anyio.create_task_group() as tg:
        await broker.declare(topology)
        if worker:
            w = Worker(
                app, broker, MemorySessionStore(f"memory://{new_id()}"), worker_settings(topology)
            )
            await tg.start(w.run)
        ingress = Ingress(broker, topology=topology, **options)  # type: ignore[arg-type]
        async with serving(ingress, limits) as (http, _, _):
            yield http, broker, topology
        tg.cancel_scope.cancel()


async def published(broker: MemoryBroker, topology: Topology) -> int:
    """Requests waiting in the request queues (none is taken without a worker)."""
    return sum([(await broker.stats(q)).ready for q in topology.queues("requests")])
