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


def _cell(c: dict[str, Any], raw: dict[str, Any], job: str, metric: str, digits: int) -> str:
    """Median of the rounds, its min–max, and the median ratio to raw within the same rounds."""
    value = _get(c, job, metric)
    if value is None:
        return "—"
    text = _num(value, digits)
    low, high = _get(c, job, f"{metric}_min"), _get(c, job, f"{metric}_max")
    if low is not None and high is not None and len(_get(c, job, "rounds") or []) > 1:
        text += f" [{_num(low, digits)}–{_num(high, digits)}]"
    ratio = _get(c, job, f"{metric}_ratio")
    if ratio is None:  # results of a run before rounds: one figure each
        return text + _ratio(value, _get(raw, job, metric))
    return text + f" ({ratio:.2f}x)"


def _load(values: list[float] | None) -> str:
    return "?" if not values else "/".join(f"{v:.1f}" for v in values)


def _round_loads(results: dict[str, Any]) -> str:
    loads = [r.get("load_average_1m") for r in results.get("rounds", [])]
    return ", ".join(f"{v:.1f}" for v in loads if v is not None) or "?"


def markdown(results: dict[str, Any]) -> str:
    """The whole report: jobs 1-3 and 6 per contender, job 4, job 5, machine and errors."""
    contenders: dict[str, Any] = results.get("contenders", {})
    raw = contenders.get("raw", {})
    m = results.get("machine", {})
    lines = [
        f"# agentqueue benchmarks ({results.get('mode')} run, {results.get('started_at', '')})"
        + (f" — {results['label']}" if results.get("label") else ""),
        "",
        f"Machine: {m.get('cpu_count')} CPUs, Python {m.get('python')}, {m.get('platform')}, "
        f"load average {_load(m.get('load_average_1_5_15'))} at the start, "
        f"{_load(m.get('load_average_at_end'))} at the end. "
        f"Broker: {_get(results, 'broker', 'kind')} {_get(results, 'broker', 'version') or ''}. "
        f"{_get(results, 'sizes', 'rounds') or 1} interleaved round(s): each figure is the median "
        "of the rounds [min–max]; in brackets the median of its ratios to raw aio-pika within the "
        "same rounds (throughput: higher is better; latency: lower is better). "
        f"Load average (1 min) at each round: {_round_loads(results)}.",
        "",
        "## Echo RPC, session-ordered events, worker footprint",
        "",
        "| contender | p50 ms | p99 ms | pipelined req/s | ordered req/s | order violations "
        "| worker CPU µs/event (pipelined, ordered) | RSS idle MB | RSS under load MB "
        "| start-up s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in contenders.values():
        violations = _get(c, "ordered", "order_violations")
        lines.append(
            f"| {c['name']} | {_cell(c, raw, 'latency', 'p50_ms', 2)} "
            f"| {_cell(c, raw, 'latency', 'p99_ms', 2)} "
            f"| {_cell(c, raw, 'pipelined', 'rps', 0)} "
            f"| {_cell(c, raw, 'ordered', 'rps', 0)} "
            f"| {'—' if violations is None else violations} "
            f"| {_cell(c, raw, 'pipelined', 'worker_cpu_us_per_event', 0)}, "
            f"{_cell(c, raw, 'ordered', 'worker_cpu_us_per_event', 0)} "
            f"| {_num(c.get('rss_idle_mb'))} | {_num(c.get('rss_load_mb'))} "
            f"| {_num(c.get('startup_s'), 2)} |"
        )
    sizes = results.get("sizes", {})
    lines += [
        "",
        f"Per round: latency: {sizes.get('calls')} calls one at a time (after 20 warm-up calls). "
        f"Pipelined: {sizes.get('requests')} requests, {sizes.get('inflight')} in flight, "
        "1 worker. Ordered: "
        f"{sizes.get('sessions')} sessions x {sizes.get('events')} events published interleaved, "
        f"{sizes.get('inflight')} in flight, 2 workers; a violation is an event that started in a "
        "worker after a later event of its session (summed over the rounds). RSS is the sum over "
        "the worker's processes (idle: after the first answer; under load: peak during any job). "
        "Worker CPU: user + system time of the worker processes during the job, per event "
        "(lower is better; steadier than req/s on a busy machine). Start-up: "
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
        job, metric = path_keys
        low = [_get(c, job, f"{metric}_min") for c in contenders.values()]
        high = [_get(c, job, f"{metric}_max") for c in contenders.values()]
        spread = None
        if all(v is not None for v in low + high):
            spread = [
                [max(v - lo, 0) for v, lo in zip(values, low, strict=True)],
                [max(hi - v, 0) for v, hi in zip(values, high, strict=True)],
            ]
        bars = ax.bar(
            names,
            values,
            yerr=spread,
            capsize=3,
            color=["#888888" if n == "raw aio-pika" else "#3b75af" for n in names],
        )
        ax.bar_label(bars, fmt="%.1f" if "ms" in title else "%.0f", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(
        f"agentqueue benchmarks ({results.get('mode')} run, "
        f"{_get(results, 'machine', 'cpu_count')} CPUs, median of "
        f"{_get(results, 'sizes', 'rounds') or 1} interleaved rounds, bars min–max)"
        + (f" — {results['label']}" if results.get("label") else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
