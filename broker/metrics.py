"""The metric instruments of the worker pipeline: events handled, handle time, queue wait,
retries, dead letters, events in flight per partition, sessions owned, model tokens and replies
refused (OpenTelemetry metrics API). The `Metrics` middleware (workers/middleware/metrics.py)
records them; `agentqueue worker --metrics-port` serves them to Prometheus.

None while no meter provider is installed, so recording costs nothing with metrics off.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics import _internal as metrics_internal

SCOPE = "agentqueue"


@dataclass(frozen=True, slots=True)
class Instruments:
    """The metric instruments, created once per meter provider."""

    handled: metrics.Counter
    duration: metrics.Histogram
    queue_wait: metrics.Histogram
    retries: metrics.Counter
    dead_letters: metrics.Counter
    in_flight: metrics.UpDownCounter
    sessions: metrics.ObservableGauge
    refused_replies: metrics.Counter
    tokens: metrics.Histogram


class _Cache:
    provider: object = None
    instruments: Instruments | None = None


_cache = _Cache()


class SessionCounter(Protocol):
    """Something that can say how many sessions it owns (a worker pipeline's metrics)."""

    def sessions_owned(self) -> tuple[int, dict[str, str]]: ...


# Read at each collection; weak, so a worker that is gone stops being reported.
_session_counters: weakref.WeakSet[SessionCounter] = weakref.WeakSet()


def report_sessions(counter: SessionCounter) -> None:
    """Report `counter.sessions_owned()` in the sessions gauge for as long as it lives."""
    _session_counters.add(counter)


def _observe_sessions(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    for counter in list(_session_counters):
        value, attributes = counter.sessions_owned()
        yield metrics.Observation(value, attributes)


# As for tracing: get_meter_provider() tests os.environ on every call until a provider is set.
_read_global = getattr(metrics_internal, "_METER_PROVIDER", False) is not False
_provider_from_env = "OTEL_PYTHON_METER_PROVIDER" in os.environ


def instruments() -> Instruments | None:
    """The metric instruments, or None while no meter provider is installed (metrics off)."""
    if _read_global and metrics_internal._METER_PROVIDER is None and not _provider_from_env:
        return None
    provider = metrics.get_meter_provider()
    if provider is not _cache.provider:
        _cache.provider = provider
        # Before set_meter_provider() the API hands out a private proxy class.
        off = (
            isinstance(provider, NoOpMeterProvider)
            or type(provider).__name__ == "_ProxyMeterProvider"
        )
        _cache.instruments = None if off else _create(provider.get_meter(SCOPE))
    return _cache.instruments


def _create(meter: metrics.Meter) -> Instruments:
    return Instruments(
        handled=meter.create_counter(
            "agentqueue.events.handled", "{event}", "Events a worker finished handling"
        ),
        duration=meter.create_histogram(
            "messaging.process.duration", "s", "Time to handle one event"
        ),
        queue_wait=meter.create_histogram(
            "agentqueue.queue.wait",
            "s",
            "Time from an envelope's creation to the start of its handling",
        ),
        retries=meter.create_counter(
            "agentqueue.retries", "{retry}", "Handler attempts that failed and were retried"
        ),
        dead_letters=meter.create_counter(
            "agentqueue.dead_letters", "{event}", "Events moved to the dead letters"
        ),
        in_flight=meter.create_up_down_counter(
            "agentqueue.in_flight", "{event}", "Events being handled now, per partition queue"
        ),
        sessions=meter.create_observable_gauge(
            "agentqueue.sessions.owned",
            [_observe_sessions],
            "{session}",
            "Sessions a worker handled a turn of, on the partitions it owns now",
        ),
        refused_replies=meter.create_counter(
            "agentqueue.replies.refused",
            "{reply}",
            "Replies dropped because they failed admission (unsigned, forged, undecodable)",
        ),
        tokens=meter.create_histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Model tokens one agent turn used, by gen_ai.token.type (input, output)",
        ),
    )
