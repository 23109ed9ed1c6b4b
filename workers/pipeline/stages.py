"""The stages in order, and where middleware sits among them. Read this file to see the pipeline.

    receive:  SizeLimit -> [middleware.admit …] -> Decode -> Park -> Route
    process:  [observing middleware.process …] -> Settle -> [app middleware.process …]
              -> Supported -> Dedup -> Deadline -> Lease -> CountRuns -> DeliveryLimit
              -> Commit -> Run

CountRuns sits under the lease: an event waiting for its session's lease (held by a worker
that just died) has not started, so a kill then does not count against it.

Observing middleware (tracing) wraps Settle, so its span covers the reply and the dead letter;
the app's middleware sits inside Settle, so an event it refuses, or an exception it raises,
is settled like any other (dead-lettered, or handed back to the broker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentqueue.workers.delayed import Park
from agentqueue.workers.pipeline.admit import Decode, Route, SizeLimit
from agentqueue.workers.pipeline.event import Layer
from agentqueue.workers.pipeline.guards import (
    CountRuns,
    Deadline,
    Dedup,
    DeliveryLimit,
    Supported,
)
from agentqueue.workers.pipeline.lease import Lease
from agentqueue.workers.pipeline.middleware import overrides
from agentqueue.workers.pipeline.run import Commit, Run
from agentqueue.workers.pipeline.settle import Settle

if TYPE_CHECKING:
    from agentqueue.workers.pipeline.pipeline import Pipeline


def receive_chain(p: Pipeline) -> list[Layer]:
    """The layers an event passes on arrival, outermost first."""
    admitting = [m.admit for m in p.middleware if overrides(m, "admit")]
    return [SizeLimit(p), *admitting, Decode(p), Park(p), Route(p)]


def process_chain(p: Pipeline, event_type: str | None = None) -> list[Layer]:
    """The layers an event of `event_type` passes in its session lane, outermost first
    (None: a refused or undecoded event, which every middleware sees)."""
    processing = [
        m
        for m in p.middleware
        if overrides(m, "process")
        and (m.processes is None or event_type is None or event_type in m.processes)
    ]
    observing = [m.process for m in processing if m.wraps_settlement]
    inner = [m.process for m in processing if not m.wraps_settlement]
    return [
        *observing,
        Settle(p),
        *inner,
        Supported(p),
        Dedup(p),
        Deadline(p),
        Lease(p),
        CountRuns(p),
        DeliveryLimit(p),
        Commit(p),
        Run(p),
    ]
