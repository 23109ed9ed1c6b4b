"""`/metrics` for Prometheus: the OpenTelemetry metrics of this process, in Prometheus' format.

`configure(..., prometheus=True)` (`agentqueue.telemetry.trace_file`) adds OpenTelemetry's
Prometheus reader to the meter provider; it registers with `prometheus_client`'s default
registry, which `MetricsServer` (a worker's `--metrics-port`) and `metrics_text` (the console)
expose. Names are translated the Prometheus way: `messaging.process.duration` in seconds becomes
`messaging_process_duration_seconds`, the counter `agentqueue.events.handled` becomes
`agentqueue_events_handled_total`.
"""

from __future__ import annotations

import logging

log = logging.getLogger("agentqueue.metrics")


class MetricsServer:
    """A `/metrics` HTTP server on a thread of its own; `close()` stops it."""

    def __init__(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; pick another"
                " --metrics-port"
            ) from None
        self.host, self.port = host, self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def metrics_text() -> tuple[bytes, str]:
    """This process's metrics in Prometheus' text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(), CONTENT_TYPE_LATEST
