"""Prometheus-ready metrics for every event, as pipeline middleware (OpenTelemetry metrics API).

Recorded here and nowhere in the stages: events handled by type and outcome, handle time
(`messaging.process.duration`, the messaging semantic conventions' name), queue wait, retries,
dead letters, events in flight per partition queue, the sessions the worker owns, and the model
tokens of each turn (`gen_ai.client.token.usage`, the GenAI conventions' name). With no
meter provider installed each event costs one check (see `broker/metrics.py`).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection

from agentqueue.broker.metrics import instruments, report_sessions
from agentqueue.protocol.messages import ResultEvent, ToolResult
from agentqueue.workers import spans
from agentqueue.workers.pipeline.event import Event, Next
from agentqueue.workers.pipeline.middleware import Middleware

SESSIONS_KEPT = 10_000  # sessions remembered per worker for the owned-sessions gauge


class Metrics(Middleware):
    """Counts and times the events of one worker; `owned()` names the queues it holds now."""

    wraps_settlement = True  # the outcome is part of the labels; it never refuses

    def __init__(self, worker_id: str, owned: Callable[[], Collection[str]] | None = None) -> None:
        self.worker_id = worker_id
        self.owned = owned
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session -> its queue
        # Sessions per queue, kept as they change: the gauge is read on every heartbeat, and
        # counting up to SESSIONS_KEPT sessions each time showed in the worker's profile.
        self._per_queue: Counter[str] = Counter()
        report_sessions(self)

    async def process(self, event: Event, call_next: Next) -> None:
        envelope = event.envelope
        assert envelope is not None
        queue = event.queue or ""
        sessions, session = self._sessions, envelope.session_id
        before = sessions.get(session)
        if before is None:
            self._per_queue[queue] += 1
            sessions[session] = queue
            if len(sessions) > SESSIONS_KEPT:
                self._per_queue[sessions.popitem(last=False)[1]] -= 1
        else:
            if before != queue:
                self._per_queue[before] -= 1
                self._per_queue[queue] += 1
                sessions[session] = queue
            sessions.move_to_end(session)
        meters = instruments()
        if meters is None:
            await call_next(event)
            return
        where = {"agentqueue.worker": self.worker_id, "messaging.destination.name": queue}
        wait = spans.queue_wait(envelope)
        if wait is not None:
            meters.queue_wait.record(wait, {**where, "agentqueue.event.type": envelope.type})
        meters.in_flight.add(1, where)
        started = time.perf_counter()
        try:
            await call_next(event)
        finally:
            meters.in_flight.add(-1, where)
            labels = {
                "agentqueue.worker": self.worker_id,
                "agentqueue.event.type": envelope.type,
                "agentqueue.outcome": outcome(event),
            }
            meters.handled.add(1, labels)
            meters.duration.record(time.perf_counter() - started, labels)
        body = event.result.body if event.result is not None else None
        usage = body.usage if isinstance(body, ResultEvent) else None
        if usage is not None:
            model = {"gen_ai.request.model": usage.model or "", "agentqueue.worker": self.worker_id}
            meters.tokens.record(usage.prompt_tokens, {**model, "gen_ai.token.type": "input"})
            meters.tokens.record(usage.completion_tokens, {**model, "gen_ai.token.type": "output"})

    def retrying(self, event: Event, error: BaseException, attempt: int, delay: float) -> None:
        meters = instruments()
        if meters is not None and event.envelope is not None:
            meters.retries.add(
                1,
                {"agentqueue.worker": self.worker_id, "agentqueue.event.type": event.envelope.type},
            )

    def dead_lettering(self, event: Event, reason: str) -> None:
        meters = instruments()
        if meters is not None:
            kind = event.envelope.type if event.envelope is not None else "refused"
            meters.dead_letters.add(
                1, {"agentqueue.worker": self.worker_id, "agentqueue.event.type": kind}
            )

    def sessions_owned(self) -> tuple[int, dict[str, str]]:
        """Sessions this worker handled a turn of whose partition it still owns."""
        if self.owned is None:
            count = len(self._sessions)
        else:
            count = sum(self._per_queue[queue] for queue in set(self.owned()))
        return count, {"agentqueue.worker": self.worker_id}


def outcome(event: Event) -> str:
    """A label for how the event ended: the result kind, `ok`/`error` for tools, or the fate."""
    if event.outcome in ("dead_letter", "hand_back"):
        return event.outcome
    if event.outcome is None:
        return "interrupted"
    body = event.result.body if event.result is not None else None
    if isinstance(body, ResultEvent):
        return body.kind
    if isinstance(body, ToolResult):
        return "ok" if body.ok else "error"
    return "done"
