"""The pipeline a consumer runs, assembled from its settings: the one place both the local
worker and the Function Compute handler build it, so they cannot drift apart."""

from __future__ import annotations

from agentqueue.broker.base import Broker
from agentqueue.workers.app import App
from agentqueue.workers.handling import Handler
from agentqueue.workers.middleware import BusySessions, EventLog, KeepStreams, Signing, Tracing
from agentqueue.workers.pipeline import Middleware, Pipeline
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.settings import Settings
from agentqueue.workers.stream_log import StreamLog


def assemble_pipeline(
    app: App,
    broker: Broker,
    store: SessionStore,
    handlers: dict[type, Handler],
    settings: Settings,
    *,
    worker_id: str,
    function_compute: bool = False,
    stream_log: StreamLog | None = None,
) -> Pipeline:
    """Tracing, the event log, the kept streams (with a `stream_log`), signatures (when the
    broker has keys), busy-session policies, the app's middleware, then the stages.
    `function_compute`: for the FC handler, whose trigger hands out batches with no delivery
    count (counted in the store instead)."""
    middleware: list[Middleware] = [Tracing(broker, worker_id), EventLog()]
    if stream_log is not None:
        middleware.append(KeepStreams(stream_log))
    if broker.signing is not None:
        signing = Signing(
            broker.signing,
            store=store,
            max_size=settings.max_message_size,
            window=settings.freshness_window,
        )
        middleware.append(signing)
    middleware.append(BusySessions(app, interrupts=not function_compute))
    return Pipeline(
        broker,
        store,
        handlers,
        topology=settings.topology,
        worker_id=worker_id,
        middleware=[*middleware, *app.middleware],
        retry=settings.retry,
        lease_ttl=settings.lease_ttl,
        delivery_limit=settings.delivery_limit,
        max_message_size=settings.max_message_size,
        reply_grace=settings.reply_grace,
        count_deliveries_in_store=function_compute,
    )
