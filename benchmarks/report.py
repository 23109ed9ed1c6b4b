"""The results of a run as a Markdown table (with ratios to raw aio-pika) and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return ""
    return f" ({value / base:.2f}x)"


def _load(values: list[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def markdown(results: dict[str, Any]) -> str:
    """The whole report: jobs 1-3 and 6 per contender, job 4, job 5, machine and errors."""
    contenders: dict[str, Any] = results.get("contenders", {})
    raw = contenders.get("raw", {})
    m = results.get("machine", {})
    lines = [
        f"# agentqueue benchmarks ({results.get('mode')} run, {results.get('started_at', '')})",
        "",
        f"Machine: {m.get('cpu_count')} CPUs, Python {m.get('python')}, {m.get('platform')}, "
        f"load average {_load(m.get('load_average_1_5_15'))} at the start, "
        f"{_load(m.get('load_average_at_end'))} at the end. "
        f"Broker: {_get(results, 'broker', 'kind')} {_get(results, 'broker', 'version') or ''}. "
        "Ratios in brackets are to raw aio-pika "
        "(throughput: higher is better; latency: lower is better).",
        "",
        "## Echo RPC, session-ordered events, worker footprint",
        "",
        "| contender | p50 ms | p99 ms | pipelined req/s | ordered req/s | order violations "
        "| RSS idle MB | RSS under load MB | start-up s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in contenders.values():
        p50 = _get(c, "latency", "p50_ms")
        p99 = _get(c, "latency", "p99_ms")
        rps = _get(c, "pipelined", "rps")
        ordered = _get(c, "ordered", "rps")
        violations = _get(c, "ordered", "order_violations")
        lines.append(
            f"| {c['name']} | {_num(p50, 2)}{_ratio(p50, _get(raw, 'latency', 'p50_ms'))} "
            f"| {_num(p99, 2)}{_ratio(p99, _get(raw, 'latency', 'p99_ms'))} "
            f"| {_num(rps)}{_ratio(rps, _get(raw, 'pipelined', 'rps'))} "
            f"| {_num(ordered)}{_ratio(ordered, _get(raw, 'ordered', 'rps'))} "
            f"| {'—' if violations is None else violations} "
            f"| {_num(c.get('rss_idle_mb'))} | {_num(c.get('rss_load_mb'))} "
            f"| {_num(c.get('startup_s'), 2)} |"
        )
    sizes = results.get("sizes", {})
    lines += [
        "",
        f"Latency: {sizes.get('calls')} calls one at a time (after 20 warm-up calls). Pipelined: "
        f"{sizes.get('requests')} requests, {sizes.get('inflight')} in flight, 1 worker. Ordered: "
        f"{sizes.get('sessions')} sessions x {sizes.get('events')} events published interleaved, "
        f"{sizes.get('inflight')} in flight, 2 workers; a violation is an event that started in a "
        "worker after a later event of its session. RSS is the sum over the worker's processes "
        "(idle: after the first answer; under load: peak during latency + pipelined). Start-up: "
        "from spawning the worker to the first answer a waiting client gets.",
        "",
        "### Configurations",
        "",
    ]
    for c in contenders.values():
        lines.append(f"- **{c['name']}**: {c['config']}")
    agents = results.get("agents")
    if agents:
        inproc = _get(agents, "inprocess", "items_per_s")
        queued = _get(agents, "agentqueue", "items_per_s")
        lines += [
            "",
            "## Agent batch (weather agent, offline scripted model, one tool call each)",
            "",
            "| how | requests | items/s | ratio to in-process |",
            "| --- | ---: | ---: | ---: |",
            "| in-process (AgentContext + run_turn, local tool) "
            f"| {_get(agents, 'inprocess', 'requests')} "
            f"| {_num(inproc, 1)} | 1.00x |",
            "| agentqueue (2 agent workers, 1 tool worker) "
            f"| {_get(agents, 'agentqueue', 'requests')} "
            f"| {_num(queued, 1)} | {_ratio(queued, inproc).strip(' ()') or '—'} |",
            "",
            f"{agents.get('config', '')}",
        ]
    codec = results.get("codec")
    if codec:
        codecs = codec["codecs"]
        base = codecs.get("msgspec (agentqueue.protocol)", {}).get("ns_per_op")
        lines += [
            "",
            "## Codec: encode + decode of a typical agent-request envelope "
            f"({codec['ops']:,} ops, best of 3)",
            "",
            "| codec | ns/op | bytes | ratio to msgspec |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in codecs.items():
            lines.append(
                f"| {name} | {_num(row['ns_per_op'])} | {row['bytes']} "
                f"| {row['ns_per_op'] / base:.2f}x |"
            )
    errors = results.get("errors")
    if errors:
        lines += ["", "## Errors", ""]
        for key, text in errors.items():
            last = [line.strip(" |") for line in text.strip().splitlines() if line.strip(" |")]
            lines.append(f"- {key}: {last[-1] if last else '?'}")
    versions = m.get("packages", {})
    if versions:
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Three bar charts: pipelined req/s, p50 latency, session-ordered req/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = results.get("contenders", {})
    names = [c["name"] for c in contenders.values()]
    panels = [
        ("echo pipelined, req/s (higher is better)", ("pipelined", "rps")),
        ("echo one at a time, p50 ms (lower is better)", ("latency", "p50_ms")),
        ("session-ordered, req/s (higher is better)", ("ordered", "rps")),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for ax, (title, path_keys) in zip(axes, panels, strict=True):
        values = [_get(c, *path_keys) or 0 for c in contenders.values()]
        bars = ax.bar(
            names, values, color=["#888888" if n == "raw aio-pika" else "#3b75af" for n in names]
        )
        ax.bar_label(bars, fmt="%.1f" if "ms" in title else "%.0f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(
        f"agentqueue benchmarks ({results.get('mode')} run, "
        f"{_get(results, 'machine', 'cpu_count')} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
