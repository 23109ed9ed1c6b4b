"""The table and the verdict of cloud_throughput: where the Alibaba Cloud path's limit is.

A row is one job at one partition count through one backend: the client's figures (see
cloud_client) plus `cpu_s` and `runqueue_s`, the CPU seconds each part used during the job and
the seconds its threads waited for a CPU (ready to run, another process on it), and for the cloud
backend `fc`, what the emulator saw of each function (named for the job whose requests it
takes: invocations, events, invocation p50).
"""

from __future__ import annotations

from typing import Any

CLOUD, RABBIT = "MNS + FC", "RabbitMQ"
JOBS = {"tools": "tool calls", "agents": "agent requests"}
PARTS = {
    CLOUD: {
        "server": "the MNS server",
        "workers": "the FC instances",
        "triggers": "the FC emulator's triggers",
        "client": "the client",
    },
    RABBIT: {"server": "RabbitMQ", "workers": "the workers", "client": "the client"},
}
SATURATED = 0.75  # share of the cores' CPU-seconds above which the CPU is the limit
AT_CEILING = 0.7  # share of the triggers' delivery ceiling above which it is the limit


def per_request_ms(row: dict[str, Any], part: str) -> float | None:
    """CPU milliseconds of one part per answered request (None: the part is not in the row)."""
    seconds = row["cpu_s"].get(part)
    if seconds is None or not row["answered"]:
        return None
    return seconds * 1000 / row["answered"]


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of every row."""
    lines = [
        "| Backend | Job | Partitions | Answered | req/s | p50 ms | p99 ms | server CPU ms/req"
        " | instances / workers CPU ms/req | triggers CPU ms/req | client CPU ms/req"
        " | waited for a CPU s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cpu = [_ms(per_request_ms(row, part)) for part in ("server", "workers", "triggers")]
        lines.append(
            f"| {row['backend']} | {JOBS[row['job']]} | {row['partitions']}"
            f" | {row['answered']}/{row['requests']} | {row['rps']:.1f} | {_ms(row['p50_ms'])}"
            f" | {_ms(row['p99_ms'])} | {' | '.join(cpu)} | {_ms(per_request_ms(row, 'client'))}"
            f" | {sum(row['runqueue_s'].values()):.1f} | {row['errors']} |"
        )
    return "\n".join(lines)


def delivery_ceiling(row: dict[str, Any]) -> float | None:
    """Requests per second the job's triggers could deliver at the batches and invocation
    times seen: each partition's trigger hands one batch at a time to an instance."""
    fc = row.get("fc", {}).get(row["job"])
    if not fc or not fc["invocations"] or not fc["invocation_p50_ms"]:
        return None
    batch = fc["events"] / fc["invocations"]
    return row["partitions"] * batch * 1000 / fc["invocation_p50_ms"]


def partitions_text(row: dict[str, Any]) -> str:
    """ "1 partition", "4 partitions": the row's partition count."""
    return f"{row['partitions']} partition{'s' if row['partitions'] > 1 else ''}"


def _ceiling_text(row: dict[str, Any], settings: dict[str, Any], ceiling: float) -> str:
    fc = row["fc"][row["job"]]
    return (
        f"the triggers' one batch at a time per partition queue"
        f" ({fc['events'] / fc['invocations']:.1f} events per batch of at most"
        f" {settings['batch_size']}, invocations p50 {fc['invocation_p50_ms']:.0f} ms: a ceiling"
        f" of {ceiling:.0f} req/s)"
    )


def _job_verdict(rows: list[dict[str, Any]], job: str, settings: dict[str, Any]) -> str | None:
    cloud = sorted(
        (r for r in rows if r["backend"] == CLOUD and r["job"] == job and r["answered"]),
        key=lambda r: r["partitions"],
    )
    if not cloud:
        return None
    first, top = cloud[0], cloud[-1]
    cpu = top["cpu_s"]
    total = sum(cpu.values())
    capacity = top["seconds"] * settings["cores"]
    biggest = max(cpu, key=lambda part: cpu[part])
    name = PARTS[CLOUD][biggest]
    text = f"{JOBS[job].capitalize()} at {partitions_text(top)}: {top['rps']:.1f} req/s"
    if top is not first:
        text += f" ({top['rps'] / first['rps']:.1f}× the rate at {partitions_text(first)})"
    text += (
        f"; {name} used {cpu[biggest]:.1f} of the {total:.1f} CPU-seconds the measured processes"
        f" used ({capacity:.1f} available on {settings['cores']} cores)"
    )
    ceiling = delivery_ceiling(top)
    at_ceiling = ceiling is not None and top["rps"] >= AT_CEILING * ceiling
    waited = sum(top["runqueue_s"].values())
    if total >= SATURATED * capacity:
        text += f": the CPU is saturated and {name} is the limit."
    elif waited >= total:
        text += (
            f"; they waited {waited:.1f} s for a CPU, longer than they ran: the limit is the"
            f" CPU, taken by the machine's other load; of this run's work, the biggest part went"
            f" to {name}."
        )
        if at_ceiling:
            text += f" Next after the CPU: {_ceiling_text(top, settings, ceiling)}."
    elif at_ceiling:
        text += (
            f", the CPU {total / capacity:.0%} busy: the limit is"
            f" {_ceiling_text(top, settings, ceiling)}."
        )
    else:
        text += (
            f", the CPU {total / capacity:.0%} busy: the limit is waiting, not work —"
            f" p50 {_ms(top['p50_ms'])} ms with {top['inflight']} in flight, against a trigger"
            f" batch window of {settings['batch_window'] * 1000:.0f} ms and an MNS long poll of"
            f" {settings['wait']} s on every reply queue and trigger."
        )
    rabbit = next(
        (
            r
            for r in rows
            if r["backend"] == RABBIT and r["job"] == job and r["partitions"] == top["partitions"]
        ),
        None,
    )
    if rabbit is not None and rabbit["answered"]:
        cloud_ms = sum(per_request_ms(top, p) or 0.0 for p in ("server", "workers", "triggers"))
        rabbit_ms = sum(per_request_ms(rabbit, p) or 0.0 for p in ("server", "workers"))
        text += (
            f" Through RabbitMQ the same job ran at {rabbit['rps']:.1f} req/s"
            f" ({top['rps'] / rabbit['rps']:.2f}× for the cloud path), its server and worker"
            f" using {rabbit_ms:.1f} CPU-ms per request against {cloud_ms:.1f} for MNS, the"
            f" triggers and the instances."
        )
    return text


def verdict(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """One paragraph, computed from the rows: where the cloud path's limit is, per job."""
    parts = [_job_verdict(rows, job, settings) for job in JOBS]
    found = [p for p in parts if p]
    if not found:
        return "No request of the cloud path was answered."
    load = max(settings["loadavg"][0], settings["loadavg_end"][0])
    if load > settings["cores"]:
        found.append(
            f"The machine was busy (load average up to {load:.1f} on {settings['cores']} cores):"
            " the CPU-seconds free to this run were fewer than the cores' count, so the rates"
            " are lower bounds and the CPU shares, not the rates, are what to compare."
        )
    return " ".join(found)


def render(result: dict[str, Any]) -> str:
    """The Markdown page: title, setup, table, verdict."""
    s = result["settings"]
    return "\n".join(
        [
            f"## Cloud path throughput — {result['label']}",
            "",
            f"{result['started']}; {s['cores']} cores, load average {s['loadavg'][0]:.2f} at the"
            f" start, {s['loadavg_end'][0]:.2f} at the end; run took {result['seconds']:.0f} s.",
            f"MNS + FC: local MNS server (its own process, long poll {s['wait']} s), FC emulator"
            " with a tools and an agents function (booted together; the agents' idle triggers"
            " keep long-polling during the tool calls), one queue trigger per partition (batches of"
            f" up to {s['batch_size']}, window {s['batch_window'] * 1000:.0f} ms), as many"
            f" provisioned instances per function as partitions. RabbitMQ: one local node, one"
            f" `agentqueue worker` per role. Both: store {s['store']}, the chaos app"
            f" (benchmarks/chaos_app.py, offline scripted model), {s['tools_inflight']} tool calls"
            f" / {s['agents_inflight']} agent requests in flight. CPU used and waited for (ready to"
            " run, the CPU taken) is read from /proc over the measured requests only (warm-up"
            " excluded).",
            "",
            render_table(result["rows"]),
            "",
            f"**Verdict.** {result['verdict']}",
            "",
        ]
    )
