"""What a batch run shows: a progress bar (or plain periodic lines) and the closing summary."""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec

from agentqueue.batch.files import STATUSES, BatchItem, ResultLine
from agentqueue.batch.tokens import Prices, TokenTotals
from agentqueue.errors import BatchInputError

Score = Callable[[dict[str, Any], dict[str, Any]], float]


@dataclass(slots=True)
class BatchCounts:
    """Live counters of a run; `done` includes results written by earlier runs."""

    total: int
    done: int = 0
    failed: int = 0  # done with a status other than final
    in_flight: int = 0
    written_now: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Results written per second by this run."""
        elapsed = time.monotonic() - self.started
        return self.written_now / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every item has a result at the current rate; None before any."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A rich progress bar on a terminal, else one plain line every `interval` seconds."""

    def __init__(
        self,
        name: str,
        counts: BatchCounts,
        *,
        live: bool | None = None,
        out: TextIO | None = None,
        interval: float = 5.0,
    ) -> None:
        self.name = name
        self.counts = counts
        self.out = out or sys.stderr
        self.live = self.out.isatty() if live is None else live
        self.interval = interval
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]batch {task.fields[name]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("[red]failed {task.fields[failed]}"),
                TextColumn("[cyan]in flight {task.fields[in_flight]}"),
                TextColumn("{task.fields[rate]:.1f}/s"),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(file=self.out),
                refresh_per_second=8,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("batch", total=self.counts.total, **self._fields())
        self.update()
        return self

    def __exit__(self, *exc: object) -> None:
        self.update()
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        else:
            self._print()

    def _fields(self) -> dict[str, Any]:
        c = self.counts
        return {
            "name": self.name,
            "failed": c.failed,
            "in_flight": c.in_flight,
            "rate": c.rate,
            "eta": _clock(c.eta),
        }

    def update(self) -> None:
        """Show the current counts (cheap: the bar redraws on its own clock)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.counts.done, **self._fields())
        elif time.monotonic() - self._last_line >= self.interval:
            self._print()

    def _print(self) -> None:
        self._last_line = time.monotonic()
        c = self.counts
        print(
            f"batch {self.name}: {c.done}/{c.total} done, {c.failed} failed,"
            f" {c.in_flight} in flight, {c.rate:.1f}/s, ETA {_clock(c.eta)}",
            file=self.out,
            flush=True,
        )


def load_score(spec: str) -> Score:
    """Import a `module:function` score function, called with (item, result) -> float."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BatchInputError(f"score {spec!r} must look like 'package.module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    fn: object = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise BatchInputError(f"score {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile (0-100) of sorted `values`, None when empty."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


@dataclass(slots=True)
class BatchSummary:
    """The outcome of a batch: counts by status over the whole results file, latency, score."""

    name: str
    output: str
    total: int
    counts: dict[str, int]
    missing: int
    written_now: int
    elapsed_s: float
    latency_ms: dict[str, float | None]
    throughput: float  # results written per second by this run
    score_mean: float | None = None
    scored: int = 0
    tokens: TokenTotals = field(default_factory=TokenTotals)

    @property
    def complete(self) -> bool:
        """True when every input item has a result line."""
        return self.missing == 0

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able data (for `--summary-json`)."""
        return {
            "name": self.name,
            "output": self.output,
            "total": self.total,
            "counts": self.counts,
            "missing": self.missing,
            "written_now": self.written_now,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": round(self.throughput, 2),
            "latency_ms": self.latency_ms,
            "score_mean": self.score_mean,
            "scored": self.scored,
            "tokens": self.tokens.to_dict(),
        }

    def render(self, out: TextIO | None = None) -> None:
        """Print the summary as a table."""
        from rich.console import Console
        from rich.table import Table

        title = f"batch {self.name} → {self.output}"
        table = Table(title=title, show_header=True, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("value", justify="right")
        for status in STATUSES:
            table.add_row(status, str(self.counts.get(status, 0)))
        table.add_row("missing", str(self.missing))
        table.add_row("total", str(self.total), end_section=True)
        for key, value in self.latency_ms.items():
            table.add_row(f"latency {key}", "-" if value is None else f"{value:.0f} ms")
        table.add_row("this run", f"{self.written_now} results in {self.elapsed_s:.1f} s")
        table.add_row("throughput", f"{self.throughput:.1f} /s")
        if self.score_mean is not None or self.scored:
            mean = "-" if self.score_mean is None else f"{self.score_mean:.4f}"
            table.add_row("score (mean)", f"{mean} over {self.scored}")
        tokens = self.tokens
        if tokens.calls:
            table.add_row("model calls", str(tokens.calls), end_section=False)
            table.add_row("tokens prompt", f"{tokens.prompt_tokens:,}")
            table.add_row("tokens completion", f"{tokens.completion_tokens:,}")
            if tokens.cost_usd is not None:
                unpriced = f" (+ unpriced {', '.join(tokens.unpriced)})" if tokens.unpriced else ""
                table.add_row("cost (estimated)", f"${tokens.cost_usd:,.4f}{unpriced}")
        Console(file=out or sys.stdout, width=max(60, len(table.title or "") + 4)).print(table)


def summarize(
    name: str,
    output: str,
    items: Iterable[BatchItem],
    results: dict[str, ResultLine],
    *,
    written_now: int,
    elapsed_s: float,
    score: Score | None = None,
    prices: Prices | None = None,
) -> BatchSummary:
    """Count every result line of the batch, sum its tokens (priced with `prices`) and score
    them with `score` when given."""
    items = list(items)
    counts = dict.fromkeys(STATUSES, 0)
    latencies: list[float] = []
    scores: list[float] = []
    missing = 0
    for item in items:
        result = results.get(item.id)
        if result is None:
            missing += 1
            continue
        counts[result.status] = counts.get(result.status, 0) + 1
        if result.latency_ms is not None:
            latencies.append(result.latency_ms)
        if score is not None:
            try:
                scores.append(float(score(item.raw, msgspec.to_builtins(result))))
            except Exception as exc:
                raise BatchInputError(
                    f"score function failed on item {item.id!r} (line {item.line}): {exc!r}"
                ) from exc
    latencies.sort()
    return BatchSummary(
        name=name,
        output=output,
        total=len(items),
        counts=counts,
        missing=missing,
        written_now=written_now,
        elapsed_s=elapsed_s,
        latency_ms={f"p{q}": percentile(latencies, q) for q in (50, 95, 99)},
        throughput=written_now / elapsed_s if elapsed_s > 0 else 0.0,
        score_mean=sum(scores) / len(scores) if scores else None,
        scored=len(scores),
        tokens=TokenTotals.of(
            (results[i.id].usage for i in items if i.id in results), prices=prices
        ),
    )
