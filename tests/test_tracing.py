"""One OpenTelemetry trace per request, from the client's publish to the reply, across workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentqueue import App, Client, RequestFailed
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.cli import main
from agentqueue.protocol import new_id
from agentqueue.telemetry.trace_file import configure
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from examples.weather import app as weather_app
from tests.config import worker_settings

MESSAGING = (
    "messaging.system",
    "messaging.destination.name",
    "messaging.message.id",
    "messaging.operation.type",
    "agentqueue.session_id",
)


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this module's tests; the global provider is set once per process."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()  # a provider cannot drop a processor: stop this one keeping spans


@pytest.fixture(scope="module")
def metric_reader() -> InMemoryMetricReader | None:
    """The metrics recorded by this process, when this module is first to install a provider."""
    if isinstance(metrics.get_meter_provider(), MeterProvider):
        return None  # someone else's provider; its readers are fixed at creation
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.broker)])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://tracing-{new_id()[:8]}"
    return request.getfixturevalue("rabbitmq_url")


def one(spans: list[ReadableSpan], name: str, parent: ReadableSpan | None = None) -> ReadableSpan:
    """The single span called `name` (under `parent` when given)."""
    found = [
        s
        for s in spans
        if s.name == name
        and (
            parent is None or (s.parent is not None and s.parent.span_id == parent.context.span_id)
        )
    ]
    assert len(found) == 1, (
        f"expected one {name!r} under {parent.name if parent else 'anything'}: {found}"
    )
    return found[0]


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def metric_points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


async def test_a_call_whose_agent_runs_a_remote_tool_is_one_trace_from_client_to_tool_and_back(
    broker_url: str, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader | None
) -> None:
    ns = f"tr{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=4, tool_partitions=4)
    store_url = f"memory://tracing-store-{new_id()[:8]}"
    async with open_broker(broker_url) as broker, anyio.create_task_group() as tg:
        agents = Worker(
            weather_app,
            broker,
            MemorySessionStore(store_url),
            worker_settings(topology),
            role="agents",
            worker_id=f"agent-{ns}",
        )
        tools = Worker(
            weather_app,
            broker,
            MemorySessionStore(store_url),
            worker_settings(topology),
            role="tools",
            worker_id=f"tool-{ns}",
        )
        await tg.start(agents.run)
        await tg.start(tools.run)
        async with Client(broker, topology=topology) as client:
            with anyio.fail_after(60):
                result = await client.call(
                    "What's the weather in Paris?", session_id="s-trace", agent="weather"
                )
        agents.stop()
        tools.stop()
    assert "sunny" in result.text
    finished = list(spans.get_finished_spans())
    assert len({s.context.trace_id for s in finished}) == 1

    call = one(finished, "call weather")
    assert call.kind is SpanKind.CLIENT and call.parent is None
    publish = [s for s in children(finished, call) if s.kind is SpanKind.PRODUCER]
    assert len(publish) == 1
    request_queue = publish[0].attributes["messaging.destination.name"]
    assert request_queue.startswith(f"{ns}-requests-")
    process = one(finished, f"process {request_queue}", parent=publish[0])
    assert process.kind is SpanKind.CONSUMER
    agent = one(finished, "invoke_agent weather", parent=process)
    tool = one(finished, "execute_tool get_weather", parent=agent)
    tool_publish = [s for s in children(finished, tool) if s.kind is SpanKind.PRODUCER]
    assert len(tool_publish) == 1
    tool_queue = tool_publish[0].attributes["messaging.destination.name"]
    assert tool_queue.startswith(f"{ns}-tools-")
    tool_process = one(finished, f"process {tool_queue}", parent=tool_publish[0])
    tool_reply = one(
        finished, f"publish {topology.reply_queue(f'worker-agent-{ns}')}", parent=tool_process
    )
    client_replies = [
        s for s in children(finished, process) if s.name == f"publish {client.reply_queue}"
    ]
    assert client_replies, (
        "the agent worker's replies to the client are publish spans under process"
    )

    for span in (publish[0], process, tool_publish[0], tool_process, tool_reply, *client_replies):
        missing = [key for key in MESSAGING if key not in span.attributes]
        assert not missing, f"{span.name} lacks {missing}"
        assert span.attributes["messaging.system"] == (
            "memory" if broker_url.startswith("memory") else "rabbitmq"
        )
        assert span.attributes["agentqueue.session_id"] == "s-trace"
    assert publish[0].attributes["messaging.operation.type"] == "send"
    assert process.attributes["messaging.operation.type"] == "process"
    assert (
        process.attributes["messaging.message.id"]
        == publish[0].attributes["messaging.message.id"]
        == result.request_id
    )
    for consumer in (process, tool_process):
        assert consumer.attributes["agentqueue.partition"] == int(consumer.name.rpartition("-")[2])
        assert consumer.attributes["agentqueue.attempt"] == 1
        assert consumer.attributes["agentqueue.queue_wait_s"] >= 0
    assert process.attributes["agentqueue.worker"] == f"agent-{ns}"
    assert tool_process.attributes["agentqueue.worker"] == f"tool-{ns}"
    assert tool_process.attributes["gen_ai.tool.name"] == "get_weather"

    if metric_reader is not None:
        points = metric_points(metric_reader)
        handled = {
            p.attributes["agentqueue.worker"]: p.value
            for p in points["agentqueue.events.handled"]
            if p.attributes["agentqueue.worker"].endswith(ns)
        }
        assert handled == {f"agent-{ns}": 1, f"tool-{ns}": 1}
        assert sum(p.count for p in points["messaging.process.duration"]) >= 2
        assert sum(p.count for p in points["agentqueue.queue.wait"]) >= 2
        in_flight = {
            p.attributes["agentqueue.worker"]: p.value for p in points["agentqueue.in_flight"]
        }
        assert in_flight[f"agent-{ns}"] == in_flight[f"tool-{ns}"] == 0


async def test_an_event_retried_before_it_succeeds_shows_each_retry_as_a_span_event(
    spans: InMemorySpanExporter,
) -> None:
    failures = [RuntimeError("model endpoint busy"), TimeoutError("model endpoint slow")]
    app = App("retrying")

    @app.agent("flaky")
    def flaky(ctx):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop(0)
        return ctx.build_agent("You are a helpful assistant.")

    topology = Topology(namespace=f"rt{new_id()[:6]}", partitions=1, tool_partitions=1)
    async with (
        open_broker(f"memory://retry-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://rs-{new_id()[:8]}"),
            worker_settings(
                topology, max_attempts=3, retry_base_delay=0.001, retry_max_delay=0.002
            ),
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            with anyio.fail_after(60):
                await client.call("My name is Ada.", session_id="s-retry", agent="flaky")
        worker.stop()
    finished = list(spans.get_finished_spans())
    process = one(finished, f"process {topology.queue('requests', 0)}")
    retries = [e for e in process.events if e.name == "retry"]
    assert [e.attributes["agentqueue.attempt"] for e in retries] == [1, 2]
    assert [e.attributes["exception.type"] for e in retries] == ["RuntimeError", "TimeoutError"]
    assert process.status.status_code is not StatusCode.ERROR
    assert one(finished, "invoke_agent flaky", parent=process).status.status_code is StatusCode.OK
    assert one(finished, "call flaky").status.status_code is not StatusCode.ERROR


async def test_a_dead_lettered_event_has_status_error_with_the_exception_and_a_dead_letter_event(
    spans: InMemorySpanExporter,
) -> None:
    app = App("poison")

    @app.agent("broken")
    def broken(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("model endpoint refused the key")

    topology = Topology(namespace=f"dl{new_id()[:6]}", partitions=1, tool_partitions=1)
    async with (
        open_broker(f"memory://dead-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://ds-{new_id()[:8]}"),
            worker_settings(
                topology, max_attempts=2, retry_base_delay=0.001, retry_max_delay=0.002
            ),
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            with anyio.fail_after(60), pytest.raises(RequestFailed):
                await client.call("hello", session_id="s-dead", agent="broken")
        worker.stop()
    finished = list(spans.get_finished_spans())
    process = one(finished, f"process {topology.queue('requests', 0)}")
    assert process.status.status_code is StatusCode.ERROR
    assert "failed after 2 attempts" in (process.status.description or "")
    names = [e.name for e in process.events]
    assert names.count("retry") == 1 and "dead_letter" in names
    exceptions = [e for e in process.events if e.name == "exception"]
    assert exceptions and exceptions[-1].attributes["exception.type"] == "ValueError"
    call = one(finished, "call broken")
    assert call.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in call.events)


def test_the_demo_prints_a_waterfall_under_100_columns_just_before_its_summary(
    exporter: InMemorySpanExporter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_file = tmp_path / "demo.jsonl"
    assert main(["demo", "--trace-file", str(trace_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("demo: 3 sessions, 6 turns, 6 replies, 0 lost")
    start = next(i for i, line in enumerate(lines) if line.startswith("── trace of a request"))
    waterfall = lines[start + 1 : -1]
    assert any("execute_tool get_weather" in line for line in waterfall)
    assert any("process aq-tools-" in line for line in waterfall)
    too_wide = [line for line in waterfall if len(line) > 100]
    assert not too_wide

    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    tool_trace = next(r["trace_id"] for r in records if r["name"] == "execute_tool get_weather")
    assert main(["trace", "show", str(trace_file), "--trace-id", tool_trace[:12]]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0].startswith(f"trace {tool_trace}")
    assert any("invoke_agent weather" in line for line in shown)
    assert all(len(line) <= 100 for line in shown)


def test_telemetry_is_left_off_when_no_trace_file_or_exporter_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    telemetry = configure("agentqueue-test")
    assert not telemetry.tracing and telemetry.meter_provider is None
    telemetry.shutdown()


def test_an_unknown_otel_exporter_is_refused_with_the_names_that_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,zipkin")
    with pytest.raises(ValueError, match="unknown exporter 'zipkin'; use otlp, console or none"):
        configure("agentqueue-test")


failing_app = App("failing")


@failing_app.tool("explode", timeout=10.0)
async def explode(city: str) -> str:
    """A tool that always fails (test helper)."""
    raise RuntimeError(f"no forecast service for {city}")


@failing_app.agent("failing")
def failing_agent(ctx):  # type: ignore[no-untyped-def]
    return ctx.build_agent("You are helpful.", tools=["explode"])


async def test_a_failed_tool_is_an_error_in_its_span_and_a_warning_with_traceback_in_the_log(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    ns = f"tf{new_id()[:6]}"
    topology = Topology(namespace=ns, partitions=2, tool_partitions=2)
    store_url = f"memory://tool-fail-{new_id()[:8]}"
    caplog.set_level("WARNING", logger="agentqueue.worker")
    async with (
        open_broker(f"memory://tool-fail-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        worker = Worker(
            failing_app, broker, MemorySessionStore(store_url), worker_settings(topology)
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            with anyio.fail_after(60):
                result = await client.call(
                    '/tool explode {"city": "Oslo"}', session_id="s-fail", agent="failing"
                )
        worker.stop()
    assert result.kind == "final"  # the agent may still answer
    error = "tool explode failed: RuntimeError: no forecast service for Oslo"
    assert result.output is not None
    assert result.output[0].metadata == {"tool_errors": [error]}
    process = [
        s
        for s in spans.get_finished_spans()
        if s.name.startswith(f"process {ns}-tools-") and s.status.status_code is StatusCode.ERROR
    ]
    assert len(process) == 1
    assert process[0].status.description == error
    assert [e.name for e in process[0].events if e.name == "tool_failed"] == ["tool_failed"]
    warned = [r for r in caplog.records if r.getMessage().startswith(error)]
    assert len(warned) == 1
    assert warned[0].levelname == "WARNING"
    assert warned[0].exc_info is not None and "no forecast service" in caplog.text
