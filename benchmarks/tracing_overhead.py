"""What tracing costs: echo `call_tool` round trips over the memory broker, tracing off vs on.

    uv run python -m benchmarks.tracing_overhead [--calls 2000] [--pairs 4] [--broker URL]

Off is the API's default (no provider installed): every hook returns a shared no-op. On installs
an SDK tracer provider that writes spans as JSON lines through a batch processor, as
`--trace-file` does, plus an SDK meter provider. A provider cannot be uninstalled, so each run is
its own process; off and on runs alternate so a busy machine slows both alike. Reported: wall
and CPU time (all threads, so the exporter's too) per round trip, medians over the runs; and
the four hooks of one round trip alone with tracing off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import anyio

from agentqueue import Client
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker, redact_url
from agentqueue.protocol import Envelope, ToolCall, new_id
from agentqueue.settings import Settings
from agentqueue.workers import spans
from agentqueue.workers.middleware.tracing import processing, publishing_reply
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from benchmarks.apps import app


async def round_trips(url: str, calls: int, warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds per round trip over `calls` echo calls after `warmup` ones."""
    topology = Topology(namespace=f"ovh{new_id()[:6]}", partitions=4, tool_partitions=4)
    if url == "memory://":
        url = f"memory://overhead-{new_id()[:8]}"
    async with open_broker(url) as broker:
        async with anyio.create_task_group() as tg:
            store = MemorySessionStore(f"memory://overhead-{new_id()[:8]}")
            settings = Settings(
                namespace=topology.namespace, partitions=4, tool_partitions=4, balance=False
            )
            worker = Worker(app, broker, store, settings, role="tools")
            await tg.start(worker.run)
            async with Client(broker, topology=topology) as client:
                for i in range(warmup):
                    await client.call_tool("echo", {"text": f"warm {i}"}, session_id="s")
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(calls):
                    await client.call_tool("echo", {"text": f"call {i}"}, session_id="s")
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            worker.stop()
    return wall / calls, cpu / calls


def hooks_off_ns() -> float:
    """Nanoseconds the four hooks of one round trip take with tracing off."""
    assert not spans.enabled(), "run before a provider is installed"
    broker = MemoryBroker("memory://hooks")
    envelope = Envelope(id="e", session_id="s", body=ToolCall(name="echo"), created_at=time.time())

    def one_round_trip() -> None:
        with spans.round_trip("call_tool", "echo", tool=True) as trip, trip.current():
            with spans.publishing(broker, "q-tools-0", envelope):
                pass
            with processing(broker, envelope, "q-tools-0", worker="w"):
                with publishing_reply(broker, "q-reply", b'{"id":"r"}', envelope):
                    pass

    n = 200_000
    return min(timeit.repeat(one_round_trip, number=n, repeat=5)) / n * 1e9


def install_telemetry(path: Path) -> None:
    """An SDK tracer provider writing JSON lines in batches, and an SDK meter provider."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from agentqueue.telemetry.trace_file import JsonLinesSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path)))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def run_one(mode: str, url: str, calls: int, warmup: int) -> dict[str, float]:
    """One measurement in this process (a child of `main`)."""
    result: dict[str, float] = {}
    if mode == "hooks":
        return {"hooks_ns": hooks_off_ns()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spans.jsonl"
        if mode == "on":
            install_telemetry(path)
        result["wall"], result["cpu"] = anyio.run(round_trips, url, calls, warmup)
        if mode == "on":
            from opentelemetry import trace

            trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
            result["spans"] = sum(1 for _ in path.open()) / (calls + warmup)
    return result


def child(mode: str, url: str, calls: int, warmup: int) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.tracing_overhead", "--mode", mode]
    command += ["--broker", url, "--calls", str(calls), "--warmup", str(warmup)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="round trips per run")
    parser.add_argument("--pairs", type=int, default=4, help="off/on run pairs (medians kept)")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--broker", default="memory://", help="broker URL (default memory://)")
    parser.add_argument("--mode", choices=["off", "on", "hooks"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_one(args.mode, args.broker, args.calls, args.warmup)))
        return

    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(args.pairs):
        for mode in ("off", "on"):
            runs[mode].append(child(mode, args.broker, args.calls, args.warmup))
    hooks = child("hooks", args.broker, 0, 0)["hooks_ns"]

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode]) * 1e6

    where = redact_url(args.broker)
    print(f"echo call_tool round trips over {where}: {args.pairs} x {args.calls} per mode")
    for mode in ("off", "on"):
        wall, cpu = median(mode, "wall"), median(mode, "cpu")
        walls = _fmt([r["wall"] for r in runs[mode]])
        print(
            f"  tracing {mode:3}: {wall:7.1f} µs wall, {cpu:7.1f} µs CPU per round trip"
            f" (runs, wall µs: {walls})"
        )
    print(f"  spans per round trip: {runs['on'][0]['spans']:.1f}")
    share = hooks / 1000 / median("off", "wall") * 100
    print(f"  the hooks alone, tracing off: {hooks:.0f} ns per round trip ({share:.2f}% of it)")
    wall_ratio = median("on", "wall") / median("off", "wall")
    cpu_ratio = median("on", "cpu") / median("off", "cpu")
    print(f"  on/off ratio: {wall_ratio:.2f} wall, {cpu_ratio:.2f} CPU")


def _fmt(rounds: list[float]) -> str:
    return ", ".join(f"{r * 1e6:.0f}" for r in rounds)


if __name__ == "__main__":
    main()
