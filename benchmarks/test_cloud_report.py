"""The cloud throughput verdict names the limit from the numbers: the CPU split, the waits."""

from __future__ import annotations

from typing import Any

from benchmarks.cloud_report import CLOUD, RABBIT, render_table, verdict

SETTINGS = {
    "cores": 2,
    "loadavg": [0.5, 0.4, 0.3],
    "loadavg_end": [0.6, 0.4, 0.3],
    "wait": 1,
    "batch_size": 10,
    "batch_window": 0.1,
}


def row(backend: str, partitions: int, rps: float, cpu: dict[str, float], **extra: Any) -> dict:
    return {
        "backend": backend, "job": "tools", "partitions": partitions, "requests": 100,
        "answered": 100, "errors": 0, "inflight": 32, "seconds": 100 / rps, "rps": rps,
        "p50_ms": 300.0, "p99_ms": 900.0, "cpu_s": cpu,
        "runqueue_s": extra.pop("runqueue_s", {part: 0.0 for part in cpu}), **extra,
    }  # fmt: skip


def test_the_mns_server_is_named_the_limit_when_it_used_most_of_the_saturated_cpu() -> None:
    cpu = {"server": 1.2, "workers": 0.4, "triggers": 0.1, "client": 0.1}
    rows = [
        row(CLOUD, 1, 60.0, cpu),
        row(CLOUD, 4, 100.0, cpu),
        row(RABBIT, 4, 200.0, {"server": 0.1, "workers": 0.3, "client": 0.1}),
    ]
    assert verdict(rows, SETTINGS) == (
        "Tool calls at 4 partitions: 100.0 req/s (1.7× the rate at 1 partition); the MNS server"
        " used 1.2 of the 1.8 CPU-seconds the measured processes used (2.0 available on 2"
        " cores): the CPU is saturated and the MNS server is the limit. Through RabbitMQ the"
        " same job ran at 200.0 req/s (0.50× for the cloud path), its server and worker using"
        " 4.0 CPU-ms per request against 17.0 for MNS, the triggers and the instances."
    )
    assert "| MNS + FC | tool calls | 4 | 100/100 | 100.0 | 300.0 | 900.0 | 12.0 | 4.0 | 1.0 |" in (
        render_table(rows)
    )


def test_a_busy_machine_is_named_when_the_processes_waited_longer_for_a_cpu_than_they_ran() -> None:
    cpu = {"server": 0.2, "workers": 0.3, "triggers": 0.1, "client": 0.1}
    waited = {"server": 0.5, "workers": 0.5, "triggers": 0.1, "client": 0.1}
    busy = {**SETTINGS, "loadavg": [7.9, 5.0, 4.0]}
    assert verdict([row(CLOUD, 2, 20.0, cpu, runqueue_s=waited)], busy) == (
        "Tool calls at 2 partitions: 20.0 req/s; the FC instances used 0.3 of the 0.7"
        " CPU-seconds the measured processes used (10.0 available on 2 cores); they waited"
        " 1.2 s for a CPU, longer than they ran: the limit is the CPU, taken by the machine's"
        " other load; of this run's work, the biggest part went to the FC instances. The machine"
        " was busy (load average up to 7.9 on 2 cores): the CPU-seconds free to this run were"
        " fewer than the cores' count, so the rates are lower bounds and the CPU shares, not"
        " the rates, are what to compare."
    )


def test_the_triggers_are_named_the_limit_when_the_rate_reaches_their_one_batch_ceiling() -> None:
    cpu = {"server": 0.2, "workers": 0.3, "triggers": 0.1, "client": 0.1}
    fc = {"tools": {"invocations": 10, "events": 40, "invocation_p50_ms": 200.0}}
    assert verdict([row(CLOUD, 1, 18.0, cpu, fc=fc)], SETTINGS) == (
        "Tool calls at 1 partition: 18.0 req/s; the FC instances used 0.3 of the 0.7"
        " CPU-seconds the measured processes used (11.1 available on 2 cores), the CPU 6% busy:"
        " the limit is the triggers' one batch at a time per partition queue (4.0 events per"
        " batch of at most 10, invocations p50 200 ms: a ceiling of 20 req/s)."
    )
