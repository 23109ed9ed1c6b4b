"""A trace as a waterfall in the terminal: one row per span, as a tree, with a timeline bar.

    service          span                                  start     dur timeline             status
    agentqueue-demo  call                                   +0µs  60.2ms ████████████████████
    agentqueue-demo  └ publish aq-requests-2              +131µs    24µs █
    worker-a           └ process aq-requests-2            +610µs  59.4ms ████████████████████
    worker-a             ├ invoke_agent weather           +1.2ms  52.3ms  █████████████████   ok
    worker-a             │ ├ execute_tool get_weather     +9.9ms  28.2ms    ███████████       ok
    worker-a             │ │ └ publish aq-tools-9        +10.0ms    45µs    █

Reads span records (`agentqueue.telemetry.trace_file.span_record`), so a trace file, several files
(one per process) or spans collected in memory render the same way. Runs of identical leaf siblings
(a streamed reply's deltas) fold into one row marked `×N`; retries and dead-lettering show as
rows under their span.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]
EVENT_ROWS = ("retry", "dead_letter")
MIN_BAR = 20


@dataclass
class _Row:
    record: Record
    children: list[_Row] = field(default_factory=list)
    count: int = 1  # >1: a folded run of identical siblings
    end: int = 0


def trace_ids(records: Iterable[Record]) -> list[str]:
    """The trace ids in the records, earliest-starting trace first."""
    first: dict[str, int] = {}
    for r in records:
        tid = r["trace_id"]
        first[tid] = min(first.get(tid, r["start"]), r["start"])
    return sorted(first, key=first.__getitem__)


def pick_trace(records: Sequence[Record], trace_id: str | None = None) -> str:
    """The trace id `trace_id` names (a unique prefix is enough), or the latest trace."""
    ids = trace_ids(records)
    if not ids:
        raise ValueError(
            "no spans to show: the trace file is empty (did the process run with --trace-file?)"
        )
    if trace_id is None:
        return ids[-1]
    wanted = trace_id.lower().removeprefix("0x")
    matches = [t for t in ids if t.startswith(wanted)]
    if len(matches) != 1:
        shown = ", ".join(ids[-5:])
        problem = "is not in" if not matches else f"matches {len(matches)} traces in"
        raise ValueError(f"trace id {trace_id!r} {problem} the file; the latest ids: {shown}")
    return matches[0]


@dataclass(frozen=True)
class Line:
    """One row of a waterfall: a span (or a retry / dead-letter event under its span)."""

    prefix: str  # the tree drawing before the label
    service: str
    label: str
    start: int  # ns after the trace's first span started
    duration: int | None  # ns; None for an event row
    status: str  # "ok", "ERROR" or ""


@dataclass(frozen=True)
class Waterfall:
    """One trace laid out as rows, with its id, span count and total duration (ns)."""

    trace_id: str
    spans: int
    total: int
    lines: list[Line]

    @property
    def services(self) -> list[str]:
        """The services (workers, clients) that recorded spans in the trace."""
        return sorted({line.service for line in self.lines if line.service})


def waterfall(records: Sequence[Record], trace_id: str | None = None) -> Waterfall:
    """The rows of one trace (default: the latest), for the terminal or the web console."""
    tid = pick_trace(records, trace_id)
    spans = sorted((r for r in records if r["trace_id"] == tid), key=lambda r: r["start"])
    t0 = spans[0]["start"]
    total = max(max(r["end"] for r in spans) - t0, 1)
    rows: list[tuple[str, str, Record, _Row | None, Record | None]] = []
    for root in _tree(spans):
        _flatten(root, "", "", rows, None)
    lines = []
    for prefix, service, record, row, event in rows:
        if event is not None:
            lines.append(Line(prefix, "", _event_label(event), event["time"] - t0, None, ""))
            continue
        assert row is not None
        start = record["start"] - t0
        duration = row.end - record["start"]
        lines.append(Line(prefix, service, _span_label(row), start, duration, _status(row)))
    return Waterfall(tid, len(spans), total, lines)


def render_waterfall(
    records: Sequence[Record], trace_id: str | None = None, *, width: int = 100
) -> list[str]:
    """The waterfall of one trace (default: the latest) as text lines at most `width` wide."""
    fall = waterfall(records, trace_id)
    total = fall.total
    # Fixed: start 8, duration 7, status 6 and 5 separators; the bar keeps MIN_BAR columns.
    fixed = 8 + 7 + 6 + 5
    service_width = min(max(7, *(len(line.service) for line in fall.lines)), 16)
    wanted = max(len(line.prefix) + min(len(line.label), 40) for line in fall.lines)
    name_width = max(20, min(wanted, width - fixed - service_width - MIN_BAR))
    bar_width = max(MIN_BAR, width - fixed - service_width - name_width)
    services = ", ".join(fall.services)
    header = f"trace {fall.trace_id}  {fall.spans} spans  {duration_text(total)}  {services}"
    lines = [_fit(header, width)]
    columns = (service_width, name_width, bar_width)
    lines.append(_row(columns, "service", "span", "start", "dur", "timeline", "status"))
    for line in fall.lines:
        label = _fit(line.prefix + line.label, name_width)
        if line.duration is None:
            bar = _marker(line.start, total, bar_width)
            lines.append(_row(columns, "", label, _offset(line.start), "", bar, ""))
            continue
        svc = _fit(line.service, service_width)
        bar = _bar(line.start, line.start + line.duration, total, bar_width)
        lines.append(
            _row(
                columns,
                svc,
                label,
                _offset(line.start),
                duration_text(line.duration),
                bar,
                line.status,
            )
        )
    return [line.rstrip()[:width] for line in lines]


def _row(columns: tuple[int, int, int], service: str, span: str, *rest: str) -> str:
    service_width, name_width, bar_width = columns
    start, duration, bar, status = rest
    head = f"{service:<{service_width}} {span:<{name_width}}"
    return f"{head} {start:>8} {duration:>7} {bar:<{bar_width}} {status}"


def _tree(spans: list[Record]) -> list[_Row]:
    rows = {r["span_id"]: _Row(r, end=r["end"]) for r in spans}
    roots: list[_Row] = []
    for r in spans:
        parent = rows.get(r.get("parent_id") or "")
        (parent.children if parent is not None else roots).append(rows[r["span_id"]])
    for row in rows.values():
        row.children = _fold(row.children)
    return roots


def _fold(children: list[_Row]) -> list[_Row]:
    """Merge runs of leaf siblings with the same name and status (e.g. streamed deltas)."""
    folded: list[_Row] = []
    for child in children:
        last = folded[-1] if folded else None
        if (
            last is not None
            and not last.children
            and not child.children
            and last.record["name"] == child.record["name"]
            and last.record["status"] == child.record["status"]
            and not child.record.get("events")
        ):
            last.count += 1
            last.end = max(last.end, child.end)
            continue
        folded.append(child)
    return folded


def _flatten(
    row: _Row, prefix: str, child_prefix: str, out: list, parent_service: str | None
) -> None:
    record = row.record
    service = (
        record["attributes"].get("agentqueue.worker")
        or parent_service
        or record.get("service")
        or ""
    )
    out.append((prefix, service, record, row, None))
    events = [e for e in record.get("events") or () if e["name"] in EVENT_ROWS]
    items: list[_Row | Record] = [*events, *row.children]
    items.sort(key=lambda item: item["time"] if isinstance(item, dict) else item.record["start"])
    for i, item in enumerate(items):
        last = i == len(items) - 1
        branch = child_prefix + ("└ " if last else "├ ")
        below = child_prefix + ("  " if last else "│ ")
        if isinstance(item, dict):
            out.append((branch, service, record, None, item))
        else:
            _flatten(item, branch, below, out, service)


def _span_label(row: _Row) -> str:
    return row.record["name"] + (f" ×{row.count}" if row.count > 1 else "")


def _event_label(event: Record) -> str:
    attrs = event.get("attributes") or {}
    if event["name"] == "retry":
        error = attrs.get("exception.type", "error")
        return f"↻ retry after attempt {attrs.get('agentqueue.attempt', '?')}: {error}"
    return f"✗ dead-lettered: {attrs.get('agentqueue.reason', '')}"


def _status(row: _Row) -> str:
    # Retries and dead-lettering have rows of their own, under the span.
    return {"ERROR": "ERROR", "OK": "ok"}.get(row.record["status"], "")


def _bar(start: int, end: int, total: int, width: int) -> str:
    a = min(int(start / total * width), width - 1)
    b = max(a + 1, min(round(end / total * width), width))
    return " " * a + "█" * (b - a) + " " * (width - b)


def _marker(offset: int, total: int, width: int) -> str:
    a = min(int(offset / total * width), width - 1)
    return " " * a + "▲" + " " * (width - a - 1)


def duration_text(ns: float) -> str:
    """A duration in nanoseconds as µs, ms or s, whichever reads best."""
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _offset(ns: int) -> str:
    return "+" + duration_text(ns)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
