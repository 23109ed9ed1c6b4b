"""Telemetry set-up from the standard `OTEL_*` variables, and spans as JSON lines in a file.

`configure("agentqueue-worker", trace_file)` installs the global OpenTelemetry providers a
process needs, or none at all (tracing off, nothing recorded) when neither a trace file nor an
exporter is asked for:

- `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER`: comma-separated `otlp`, `console`, `none`.
  Unlike the SDK's auto-instrumentation the default is `none`, so a worker never sends to a
  collector nobody configured.
- `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`) and the rest of
  `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
  `OTEL_BSP_*`, `OTEL_METRIC_EXPORT_INTERVAL` are read by the SDK itself.
- `OTEL_SDK_DISABLED=true` turns everything off, the trace file included.

The JSON-lines file holds one span per line (see `span_record`); `agentqueue trace show` reads it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

EXPORTERS = ("otlp", "console", "none")
_encoder = msgspec.json.Encoder(enc_hook=str)  # a few times faster than json.dumps, per span


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the plain dict a trace file line holds (ids in hex, times in ns)."""
    ctx = span.get_span_context()
    assert ctx is not None, "a span started by the SDK's tracer has a context"
    parent = span.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name") if span.resource else None,
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description,
        "attributes": _plain(span.attributes),
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": _plain(e.attributes)}
            for e in span.events
        ],
    }


def _plain(attributes: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported span to a file as one JSON line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans; a write error fails this batch, not the process."""
        lines = b"".join(_encoder.encode(span_record(s)) + b"\n" for s in spans)
        try:
            with self._lock:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self.path.open("ab")
                self._file.write(lines)
                self._file.flush()
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Every export is flushed already."""
        return True


class SpanCollector(SpanProcessor):
    """Keeps finished spans in memory (for the demo's waterfall) until `stop()`."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._stopped = False

    def on_end(self, span: ReadableSpan) -> None:
        if not self._stopped:
            self.spans.append(span)

    def records(self) -> list[dict[str, Any]]:
        """The collected spans as trace file records."""
        return [span_record(s) for s in self.spans]

    def stop(self) -> None:
        """Stop collecting (a provider cannot drop a processor) and forget what was collected."""
        self._stopped = True
        self.spans = []


def read_spans(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Every span record in the given trace files (several files: one per process)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{number} is not a JSON span record ({exc.msg});"
                        " pass a file written with --trace-file"
                    ) from None
    return records


@dataclass
class Telemetry:
    """What `configure` installed; `shutdown()` flushes and closes it before the process exits."""

    tracer_provider: TracerProvider | None = None
    meter_provider: Any = None
    processors: list[SpanProcessor] = field(default_factory=list)
    owns_tracer_provider: bool = False

    @property
    def tracing(self) -> bool:
        """True when spans are recorded."""
        return self.tracer_provider is not None

    def shutdown(self) -> None:
        """Export what is pending and release exporters (files, connections)."""
        if self.owns_tracer_provider and self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        else:
            for processor in self.processors:
                processor.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def sdk_disabled() -> bool:
    """True when `OTEL_SDK_DISABLED` asks for no telemetry at all."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def configure(
    service_name: str, trace_file: str | None = None, *, prometheus: bool = False
) -> Telemetry:
    """Install the providers `OTEL_*` and `trace_file` ask for; none if neither asks.

    `prometheus`: also keep the metrics for a Prometheus scrape (see
    `agentqueue.telemetry.prometheus`).
    """
    telemetry = Telemetry()
    if sdk_disabled():
        return telemetry
    exporters = [_span_exporter(name) for name in _exporter_names("OTEL_TRACES_EXPORTER")]
    if trace_file:
        exporters.append(JsonLinesSpanExporter(trace_file))
    if exporters:
        existing = trace.get_tracer_provider()
        provider = tracer_provider(service_name)
        if provider is not None:
            telemetry.tracer_provider = provider
            telemetry.owns_tracer_provider = provider is not existing
            for exporter in exporters:
                processor = BatchSpanProcessor(exporter)
                provider.add_span_processor(processor)
                telemetry.processors.append(processor)
    readers = [_metric_reader(name) for name in _exporter_names("OTEL_METRICS_EXPORTER")]
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    if readers and type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider":
        from opentelemetry.sdk.metrics import MeterProvider

        telemetry.meter_provider = MeterProvider(
            metric_readers=readers, resource=_resource(service_name)
        )
        metrics.set_meter_provider(telemetry.meter_provider)
    return telemetry


def tracer_provider(service_name: str) -> TracerProvider | None:
    """The global SDK tracer provider, installing one if none is; None if another kind is set."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    if not isinstance(current, trace.ProxyTracerProvider):
        return None  # someone installed a provider of their own: leave it alone
    provider = TracerProvider(resource=_resource(service_name))
    trace.set_tracer_provider(provider)
    return provider


def collect_spans(service_name: str) -> SpanCollector:
    """A collector of this process's finished spans; installs a provider if none is installed."""
    collector = SpanCollector()
    provider = None if sdk_disabled() else tracer_provider(service_name)
    if provider is not None:
        provider.add_span_processor(collector)
    return collector


def _resource(service_name: str) -> Resource:
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name the service when set; ours is the fallback.
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    return Resource.create({} if named else {"service.name": service_name})


def _exporter_names(variable: str) -> list[str]:
    names = [n.strip().lower() for n in os.environ.get(variable, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise ValueError(
            f"{variable}={os.environ[variable]!r}: unknown exporter {unknown[0]!r};"
            " use otlp, console or none"
        )
    return [n for n in names if n != "none"]


def _otlp_protocol(signal: str) -> str:
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTLP protocol {protocol!r} is not supported; use http/protobuf or grpc")
    return protocol


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if _otlp_protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter()


def _metric_reader(name: str) -> Any:
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter())
    if _otlp_protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return PeriodicExportingMetricReader(OTLPMetricExporter())
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )

    return PeriodicExportingMetricReader(HTTPMetricExporter())
