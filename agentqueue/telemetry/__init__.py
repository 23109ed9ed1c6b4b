"""Spans and metrics: OpenTelemetry set up per command, trace files, waterfalls, Prometheus."""
