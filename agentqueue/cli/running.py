"""What commands do around their work: load the app, set up telemetry, open the shared broker."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import anyio

from agentqueue.broker.urls import redact_url
from agentqueue.settings import Settings

if TYPE_CHECKING:
    from agentqueue.broker.base import Broker
    from agentqueue.client import Client
    from agentqueue.workers.app import App

T = TypeVar("T")

# Modules a command needs only when it runs (the client, the broker drivers, the app) are
# imported inside the functions below and inside each handler: `agentqueue --help` and a
# command's refusal stay quick and never import what another command needs.


def load_app(spec: str) -> App:
    """The App at `spec` (module:attribute), importable from the current directory too."""
    from agentqueue.workers.app import load_app as load

    # Like uvicorn and celery: an app module in the current directory is importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load(spec)


@contextlib.contextmanager
def telemetry(
    settings: Settings,
    service: str,
    metrics_at: tuple[str, int] | None = None,
    *,
    prometheus: bool = False,
) -> Iterator[None]:
    """OpenTelemetry from OTEL_* and --trace-file for one command, flushed when it ends;
    `metrics_at` (host, port) also serves its metrics to Prometheus there; `prometheus` keeps
    them for a `/metrics` the command serves itself."""
    from agentqueue.telemetry.trace_file import configure

    keep = prometheus or metrics_at is not None
    telemetry = configure(service, settings.trace_file, prometheus=keep)
    server = None
    try:
        if metrics_at is not None:
            from agentqueue.telemetry.prometheus import MetricsServer

            server = MetricsServer(*metrics_at)
        yield
    finally:
        if server is not None:
            server.close()
        telemetry.shutdown()


def require_shared_broker(settings: Settings, what: str) -> None:
    """Refuse memory:// for a command that needs workers in other processes."""
    # memory:// lives inside one process: no worker of another process would ever answer.
    if settings.broker.startswith("memory:"):
        raise ValueError(
            f"{what} needs a broker that workers share: pass --broker amqp://… or mns://…"
            " (or set AGENTQUEUE_BROKER); memory:// exists only inside one process"
            " (`agentqueue demo` runs an embedded broker and its workers in one process)"
        )


async def namespace_exists(broker: Broker, settings: Settings, what: str) -> bool:
    """Whether the namespace's queues exist, looked up without declaring (so never created)."""
    from agentqueue.broker.errors import QueueMissing

    try:
        await broker.stats(settings.topology.dead_letter_queue)
    except QueueMissing:
        print(
            f"agentqueue {what}: no queues for namespace {settings.namespace!r} on"
            f" {redact_url(settings.broker)}; check --namespace (AGENTQUEUE_NAMESPACE), or start"
            " a worker, which declares them",
            file=sys.stderr,
        )
        return False
    return True


def on_broker(
    settings: Settings,
    what: str,
    body: Callable[[Broker], Awaitable[T]],
    *,
    existing: bool = False,
) -> T | int:
    """Run `body` on the shared broker; with `existing`, exit code 1 (and why) when the
    namespace has no queues, so looking never declares them."""
    require_shared_broker(settings, what)

    async def go() -> T | int:
        async with settings.open_broker() as broker:
            if existing and not await namespace_exists(broker, settings, what):
                return 1
            return await body(broker)

    return anyio.run(go)


def with_client(settings: Settings, what: str, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run `body` with a Client of the shared broker, the settings' deadline its default."""
    from agentqueue.client import Client

    require_shared_broker(settings, what)

    async def go() -> T:
        async with Client(
            settings.broker, topology=settings.topology, default_timeout=settings.timeout
        ) as client:
            return await body(client)

    return anyio.run(go)


def wait_for_stop() -> None:
    """Block until SIGTERM or Ctrl-C."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # a wait with no timeout would not see the signal
            pass
    except KeyboardInterrupt:
        pass
