"""The scaling run's tables, verdicts and chart (see benchmarks/scale.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUSY = 0.9  # a part using this share of what it can use is the limit


def _share(point: dict[str, Any], part: str) -> float:
    """CPU seconds per wall second a part used during a point (1.0: one core all the time)."""
    cpu = point["cpu_s"]
    return float(cpu.get(part, 0.0)) / max(float(cpu["wall"]), 1e-9)


def _busy(point: dict[str, Any], cpus: int) -> float:
    """The share of the machine's cores busy during a point."""
    return _share(point, "machine") / cpus


def limit(point: dict[str, Any], cpus: int) -> str:
    """Which part limited a point, from the CPU each part used."""
    parts = {p: _share(point, p) for p in ("broker", "workers", "redis")}
    parts["client and the rest"] = max(0.0, _share(point, "machine") - sum(parts.values()))
    top = max(parts, key=lambda p: parts[p])
    split = ", ".join(f"{p} {v:.2f}" for p, v in parts.items() if v >= 0.01)
    if _busy(point, cpus) >= BUSY:
        return f"the machine: {_busy(point, cpus):.0%} of {cpus} cores busy ({split} cores)"
    return f"no core saturated ({_busy(point, cpus):.0%} busy; {split} cores); most: {top}"


def _bend(points: list[dict[str, Any]], rate: str, x: str) -> str:
    first, last = points[0], points[-1]
    change = last[rate] / first[rate] - 1
    p99 = last["loaded_p99_ms"] / first["loaded_p99_ms"]
    return (
        f"from {first[x]:,} to {last[x]:,}: throughput {change:+.0%},"
        f" p99 x{p99:.2f} ({first['loaded_p99_ms']:.0f} -> {last['loaded_p99_ms']:.0f} ms)"
    )


def markdown(results: dict[str, Any]) -> str:
    """The run as Markdown: one table and one verdict per curve."""
    cpus = int(results["cpus"])
    title = "Scaling run" + (f" ({results['label']})" if results.get("label") else "")
    load = results["load_average_at_start"][0], results["load_average_at_end"][0]
    lines = [
        f"# {title}",
        "",
        f"{results['started_at']}, {cpus} cores, {results['mode']} sizes,"
        f" {results['wall_seconds'] / 60:.1f} min; load average at start"
        f" {load[0]:.1f}, at end {load[1]:.1f}."
        " CPU columns are cores used on average (CPU seconds per second).",
        "",
    ]
    parts = results["partitions"]
    lines += [
        "## Partitions (session-ordered tool calls, 2 tool workers)",
        "",
        "| partitions | events/s | p50 ms | p99 ms | broker | workers | machine busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {p['partitions']} | {p['rps']:.0f} | {p['loaded_p50_ms']:.0f} |"
            f" {p['loaded_p99_ms']:.0f} | {_share(p, 'broker'):.2f} | {_share(p, 'workers'):.2f} |"
            f" {_busy(p, cpus):.0%} |"
            for p in parts
        ),
        "",
        f"Order violations: {sum(p['order_violations'] for p in parts)}."
        f" {_bend(parts, 'rps', 'partitions')}; limit at {parts[-1]['partitions']}:"
        f" {limit(parts[-1], cpus)}.",
        "",
    ]
    sessions = results["sessions"]
    lines += [
        "## Live sessions (agent requests at random over sessions with state in the store)",
        "",
        "| store | live sessions | requests/s | p50 ms | p99 ms | worker RSS MB | broker |"
        " workers | redis | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {p['store']} | {p['live_sessions']:,} | {p['items_per_s']:.0f} |"
            f" {p['loaded_p50_ms']:.0f} | {p['loaded_p99_ms']:.0f} | {p['rss_mb']:.0f} |"
            f" {_share(p, 'broker'):.2f} | {_share(p, 'workers'):.2f} | {_share(p, 'redis'):.2f} |"
            f" {_busy(p, cpus):.0%} |"
            for p in sessions
        ),
        "",
    ]
    for store in dict.fromkeys(p["store"] for p in sessions):
        points = [p for p in sessions if p["store"] == store]
        lines.append(
            f"- {store} ({points[0]['state_bytes']:,}-byte state):"
            f" {_bend(points, 'items_per_s', 'live_sessions')}; limit at the largest:"
            f" {limit(points[-1], cpus)}."
        )
    workers = results["agent_workers"]
    lines += [
        "",
        "## Agent worker processes (agent batch, 1 tool worker beside them)",
        "",
        "| agent workers | requests/s | p50 ms | p99 ms | broker | workers | machine busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {p['agent_workers']} | {p['items_per_s']:.0f} | {p['loaded_p50_ms']:.0f} |"
            f" {p['loaded_p99_ms']:.0f} | {_share(p, 'broker'):.2f} | {_share(p, 'workers'):.2f} |"
            f" {_busy(p, cpus):.0%} |"
            for p in workers
        ),
        "",
        f"{_bend(workers, 'items_per_s', 'agent_workers')}.",
        *(f"- {p['agent_workers']} worker(s): {limit(p, cpus)}." for p in workers),
        "",
    ]
    memory = results["memory"]
    lines += [
        "## Memory per idle session",
        "",
        f"2 tool workers served {memory['sessions']:,} sessions once each:"
        f" {memory['rss_before_mb']:.1f} MB before, {memory['rss_after_mb']:.1f} MB after,"
        f" **{memory['bytes_per_idle_session']:.0f} bytes per idle session**.",
        "",
    ]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Four panels: throughput (and p99) against each thing scaled, and the CPU split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    title = "agentqueue scaling" + (f" ({results['label']})" if results.get("label") else "")
    fig.suptitle(title)

    def curve(
        ax: Any, points: list[dict[str, Any]], x: str, rate: str, label: str, log_x: bool = True
    ) -> None:
        xs = [p[x] for p in points]
        ax.plot(xs, [p[rate] for p in points], "o-")
        twin = ax.twinx()
        twin.plot(xs, [p["loaded_p99_ms"] for p in points], "s--", alpha=0.6)
        twin.set_ylabel("p99 ms (dashed)")
        twin.set_ylim(bottom=0)
        ax.set_ylabel(f"{label} per second (solid)")
        ax.set_ylim(bottom=0)
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:,}" for v in xs])
        ax.minorticks_off()

    ax = axes[0][0]
    curve(ax, results["partitions"], "partitions", "rps", "events")
    ax.set_title("partitions (ordered tool calls)")
    ax = axes[0][1]
    for store in dict.fromkeys(p["store"] for p in results["sessions"]):
        points = [p for p in results["sessions"] if p["store"] == store]
        xs = [p["live_sessions"] for p in points]
        ax.plot(xs, [p["items_per_s"] for p in points], "o-", label=f"{store} requests/s")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("agent requests per second")
    ax.set_title("live sessions with state")
    ax.legend()
    ax = axes[1][0]
    curve(ax, results["agent_workers"], "agent_workers", "items_per_s", "requests", log_x=False)
    ax.set_title("agent worker processes")
    ax = axes[1][1]
    points = results["agent_workers"]
    bottom = [0.0] * len(points)
    for part in ("broker", "workers", "redis"):
        values = [_share(p, part) for p in points]
        ax.bar([str(p["agent_workers"]) for p in points], values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    rest = [max(0.0, _share(p, "machine") - b) for p, b in zip(points, bottom, strict=True)]
    ax.bar([str(p["agent_workers"]) for p in points], rest, bottom=bottom, label="client, rest")
    ax.axhline(int(results["cpus"]), color="grey", linestyle=":", label="all cores")
    ax.set_title("cores used, by agent worker count")
    ax.set_ylabel("cores")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
