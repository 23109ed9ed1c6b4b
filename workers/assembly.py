"""The pipeline a consumer runs, assembled from its settings: the one place both the local
worker and the Function Compute handler build it, so they cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Collection

from agentqueue.broker.base import Broker
from agentqueue.protocol.messages import AgentRequest
from agentqueue.workers.agent_handler import AgentHandler
from agentqueue.workers.app import App
from agentqueue.workers.handling import Handler
from agentqueue.workers.middleware import (
    ApprovalPauses,
    BusySessions,
    EventLog,
    KeepStreams,
    Metrics,
    ModelBudget,
    Signing,
    Tracing,
    TurnSummaries,
)
from agentqueue.workers.pipeline import Middleware, Pipeline
from agentqueue.workers.session_store import SessionStore
from agentqueue.workers.settings import Settings
from agentqueue.workers.stream_log import StreamLog
from agentqueue.workers.timers import Timers


def assemble_pipeline(
    app: App,
    broker: Broker,
    store: SessionStore,
    handlers: dict[type, Handler],
    settings: Settings,
    *,
    worker_id: str,
    function_compute: bool = False,
    timers: Timers | None = None,
    owned: Callable[[], Collection[str]] | None = None,
    stream_log: StreamLog | None = None,
) -> Pipeline:
    """Tracing, metrics, the event log, the kept streams (with a `stream_log`), turn
    summaries, signatures (when the broker has keys), busy-session policies, approval pauses,
    the shared model budget (when a rate limit is set), the app's middleware, then the stages.
    `function_compute`: for the FC handler, whose trigger hands out batches with no delivery
    count (counted in the store instead). `timers`: where delayed requests wait on a broker that
    cannot delay messages itself, and approval timeouts. `owned`: the queues the consumer holds
    now, for the owned-sessions gauge."""
    middleware: list[Middleware] = [Tracing(broker, worker_id), Metrics(worker_id, owned)]
    middleware.append(EventLog())
    if stream_log is not None:
        middleware.append(KeepStreams(stream_log))
    middleware.append(TurnSummaries(worker_id))
    if broker.signing is not None:
        signing = Signing(
            broker.signing,
            store=store,
            max_size=settings.max_message_size,
            window=settings.freshness_window,
        )
        middleware.append(signing)
    middleware.append(BusySessions(app, interrupts=not function_compute))
    middleware.append(ApprovalPauses(app))
    agents = handlers.get(AgentRequest)
    if isinstance(agents, AgentHandler) and agents.models.limit is not None:
        middleware.append(ModelBudget(agents.models))
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
        timers=timers,
    )
