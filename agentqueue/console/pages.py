"""The console's HTML: server-rendered fragments and a few lines of plain JavaScript that
poll them, so nothing is built at install time and nothing is fetched from elsewhere."""

from __future__ import annotations

import json
import time
from html import escape
from urllib.parse import quote

from agentqueue.admin import envelope_json
from agentqueue.console.requests import RequestView
from agentqueue.console.state import ConsoleState
from agentqueue.telemetry.trace_view import Waterfall, duration_text, waterfall

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}
header form{margin-left:auto}
main{padding:12px 20px;display:grid;gap:16px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 14px}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eef0f2;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.stuck td{background:#ffe3e0;font-weight:600}
.banner{padding:10px 14px;border-radius:6px;font-weight:600}
.banner.down{background:#ffd7d2;border:1px solid #e0625a}
.banner.ok{background:#e2f5e6;border:1px solid #76c48a}
.said{background:#fff7d6;border:1px solid #e3c55b;padding:8px 12px;border-radius:6px}
.muted{color:#69737d}
.bar{position:relative;height:14px;min-width:320px}
.bar span{position:absolute;top:1px;height:12px;background:#4b8bd6;border-radius:2px;min-width:2px}
.bar span.ERROR{background:#d9534f}
.bar i{position:absolute;top:0;color:#d9534f;font-style:normal}
a.turn{display:inline-block;padding:0 6px;margin-right:4px;border-radius:3px;background:#e2f5e6;
color:#1d232a;text-decoration:none;font-size:12px}
a.turn.dead_letter,a.turn.failed,a.turn.timed_out{background:#ffd7d2}
a.turn.approval_required{background:#ffe8b0}
a.turn.rejected,a.turn.interrupted,a.turn.superseded,a.turn.cancelled{background:#e4e6ea}
td.down{background:#ffd7d2}
pre{background:#f2f4f6;padding:8px;overflow:auto;max-height:300px}
button{cursor:pointer}
"""

POLL = """
const live = document.getElementById("live");
async function refresh() {
  try {
    const r = await fetch("/fragments/overview", {cache: "no-store"});
    if (r.ok) { live.innerHTML = await r.text(); }
  } catch (e) {
    live.querySelector(".banner").outerHTML =
      '<div class="banner down" id="broker">the console itself does not answer: ' + e + '</div>';
  }
}
setInterval(refresh, 1000);
"""


def page(title: str, body: str, *, script: str = "") -> str:
    """A whole page around `body`."""
    tail = f"<script>{script}</script>" if script else ""
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><header><a href='/'>agentqueue console</a>"
        "<form action='/requests' method='get'><input name='id' placeholder='request id'"
        " size=36> <button>show request</button></form></header>"
        f"<main>{body}</main>{tail}</body></html>"
    )


def overview_page(state: ConsoleState, said: str | None) -> str:
    """The live page: everything `overview` shows, refreshed every second."""
    note = f"<div class='said' id='said'>{escape(said)}</div>" if said else ""
    return page(
        f"agentqueue · {state.topology.namespace}",
        f"{note}<div id='live'>{overview(state)}</div>",
        script=POLL,
    )


def overview(state: ConsoleState) -> str:
    """The live fragment: broker banner, partitions, workers, dead letters."""
    return "".join(
        (
            _banner(state),
            "<main style='padding:0'>",
            _partitions(state),
            _workers(state),
            _sessions(state),
            _dead_letters(state),
            _batches(state),
            "</main>",
        )
    )


def _banner(state: ConsoleState) -> str:
    if state.broker_error is not None:
        since = time.strftime("%H:%M:%S", time.localtime(state.updated_at or time.time()))
        return (
            f"<div class='banner down' id='broker'>{escape(state.broker_error)}; retrying every"
            f" {state.interval:g} s (figures below are from {since})</div>"
        )
    return (
        f"<div class='banner ok' id='broker'>broker connected · namespace"
        f" {escape(state.topology.namespace)} · {len(state.live())} live workers</div>"
    )


def _partitions(state: ConsoleState) -> str:
    rows = []
    for p in state.partitions:
        unacked = "-" if p.unacked is None else str(p.unacked)
        owner = p.owner or ("-" if p.consumers == 0 else "(no heartbeat)")
        cls = " class='stuck' title='messages wait and no worker consumes them'" if p.stuck else ""
        rows.append(
            f"<tr{cls} data-queue='{escape(p.queue)}'><td>{escape(p.queue)}</td>"
            f"<td class=num>{p.ready}</td><td class=num>{unacked}</td>"
            f"<td class=num>{p.in_flight}</td><td class=num>{p.consumers}</td>"
            f"<td class=num>{p.rate:.1f}</td><td class=owner>{escape(owner)}</td></tr>"
        )
    stuck = sum(p.stuck for p in state.partitions)
    head = f"partitions · {stuck} stuck" if stuck else "partitions"
    return (
        f"<section id='partitions'><h2>{head}</h2><table><tr><th>queue</th>"
        "<th class=num>ready</th><th class=num>unacked</th><th class=num>in flight</th>"
        "<th class=num>consumers</th><th class=num>events/s</th><th>owner</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _workers(state: ConsoleState) -> str:
    now = time.time()
    rows = []
    for worker_id, seen in sorted(state.live().items()):
        hb = seen.heartbeat
        load = hb.load
        in_flight = sum(load.in_flight.values()) if load else 0
        handled = sum(load.handled.values()) if load else 0
        rows.append(
            f"<tr data-worker='{escape(worker_id)}'><td>{escape(worker_id)}</td>"
            f"<td>{escape(load.role if load else '?')}</td><td class=num>{len(hb.owned)}</td>"
            f"<td class=num>{in_flight}</td><td class=num>{handled}</td>"
            f"<td class=num>{load.sessions if load else 0}</td>"
            f"<td class=num>{now - seen.seen_at:.1f} s ago</td>"
            f"<td>{escape(load.version if load else '?')}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan=8 class=muted>no heartbeats heard</td></tr>")
    return (
        "<section id='workers'><h2>workers</h2><table><tr><th>worker</th><th>role</th>"
        "<th class=num>partitions</th><th class=num>in flight</th><th class=num>handled</th>"
        "<th class=num>sessions</th><th class=num>last heartbeat</th><th>version</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _sessions(state: ConsoleState) -> str:
    rows = []
    for row in state.sessions:
        turns = " ".join(
            f"<a class='turn {escape(t.outcome)}' href='/requests/{quote(t.id)}'"
            f" title='{escape(t.id)}'>{escape(t.outcome)} {t.ms:.0f} ms</a>"
            for t in reversed(row.turns[-5:])
        )
        last = time.strftime("%H:%M:%S", time.localtime(row.turns[-1].at)) if row.turns else "-"
        rows.append(
            f"<tr data-session='{escape(row.session_id)}'><td>{escape(row.session_id)}</td>"
            f"<td>{last}</td><td class=turns>{turns}</td>"
            f"<td class=num>{row.state_bytes}</td><td>{escape(row.owner)}</td></tr>"
        )
    if state.store_error is not None:
        rows.insert(0, f"<tr><td colspan=5 class=down>{escape(state.store_error)}</td></tr>")
    if not rows:
        rows.append("<tr><td colspan=5 class=muted>no turns recorded yet</td></tr>")
    return (
        "<section id='sessions'><h2>sessions</h2><table><tr><th>session</th><th>last turn</th>"
        "<th>last turns, newest first</th><th class=num>state bytes</th><th>last worker</th>"
        "</tr>" + "".join(rows) + "</table></section>"
    )


def _batches(state: ConsoleState) -> str:
    rows = []
    for b in state.batches:
        share = b.done / b.total * 100 if b.total else 100.0
        status = "done" if b.finished else "running"
        score = "-" if b.score is None else f"{b.score:.3f}"
        rows.append(
            f"<tr data-batch='{escape(b.name)}'><td>{escape(b.name)}</td><td>{status}</td>"
            f"<td><progress max=100 value='{share:.0f}'></progress> {b.done}/{b.total}</td>"
            f"<td class=num>{b.failed}</td><td class=num>{b.in_flight}</td>"
            f"<td class=num>{b.rate:.1f}</td><td class=num>{score}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan=7 class=muted>no batch runs recorded</td></tr>")
    return (
        "<section id='batches'><h2>batch runs</h2><table><tr><th>batch</th><th>status</th>"
        "<th>progress</th><th class=num>failed</th><th class=num>in flight</th>"
        "<th class=num>results/s</th><th class=num>score</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _dead_letters(state: ConsoleState) -> str:
    rows = []
    for i, r in enumerate(state.dead):
        key = r.envelope_id or str(i)
        when = time.strftime("%H:%M:%S", time.localtime(r.failed_at)) if r.failed_at else "-"
        envelope = envelope_json(r)
        shown = (
            json.dumps(envelope, indent=2, ensure_ascii=False)
            if envelope is not None
            else f"({len(r.payload)} bytes, not an envelope)"
        )
        link = (
            f"<a href='/requests/{quote(r.envelope_id)}'>{escape(r.envelope_id)}</a>"
            if r.envelope_id
            else "(no id)"
        )
        rows.append(
            f"<tr data-dead='{escape(key)}'><td>{link}</td><td>{when}</td>"
            f"<td>{escape(r.queue)}</td><td>{escape(r.session_id or '-')}</td>"
            f"<td class=reason>{escape(r.reason)}</td><td>"
            f"{_button('replay', key)} {_button('purge', key)}</td></tr>"
            f"<tr><td colspan=6><details><summary>envelope</summary><pre>{escape(shown)}</pre>"
            "</details></td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan=6 class=muted>no dead letters</td></tr>")
    return (
        f"<section id='dead-letters'><h2>dead letters · {state.dead_count}</h2><table><tr>"
        "<th>envelope</th><th>failed</th><th>queue</th><th>session</th><th>reason</th><th></th>"
        "</tr>" + "".join(rows) + "</table></section>"
    )


def _button(action: str, key: str) -> str:
    return (
        f"<form method='post' action='/dead-letters/{action}' style='display:inline'>"
        f"<input type='hidden' name='key' value='{escape(key)}'>"
        f"<button name='{action}' data-key='{escape(key)}'>{action}</button></form>"
    )


def request_page(view: RequestView) -> str:
    """One request: its hops, its answer and its trace as a waterfall."""
    answer = view.answer
    if answer is None:
        said = "<p class=muted id='answer'>no answer stored yet (still running, or failed)</p>"
    else:
        text = answer.text or answer.error or ""
        said = f"<p id='answer'><b class='kind'>{escape(answer.kind)}</b>: {escape(text)}</p>"
    hops = "".join(
        f"<tr><td>{_clock(r['start'])}</td><td>{escape(r['name'])}</td>"
        f"<td>{escape(str(r['attributes'].get('agentqueue.worker', r.get('service') or '')))}"
        f"</td><td>{escape(r['status'])}</td></tr>"
        for r in view.hops
    )
    falls = []
    for trace_id in dict.fromkeys(r["trace_id"] for r in view.hops):
        falls.append(_waterfall(waterfall(view.spans, trace_id)))
    return page(
        f"request {view.request_id}",
        f"<section id='request'><h2>request {escape(view.request_id)}</h2>"
        f"<p>session {escape(view.session_id or '-')}</p>{said}</section>"
        "<section id='events'><h2>events</h2><table><tr><th>at</th><th>span</th>"
        f"<th>where</th><th>status</th></tr>{hops}</table></section>" + "".join(falls),
    )


def _waterfall(fall: Waterfall) -> str:
    total = fall.total
    rows = []
    for line in fall.lines:
        left = line.start / total * 100
        if line.duration is None:
            bar = f"<i style='left:{left:.2f}%'>▲</i>"
            took = ""
        else:
            width = line.duration / total * 100
            bar = f"<span class='{line.status}' style='left:{left:.2f}%;width:{width:.2f}%'></span>"
            took = duration_text(line.duration)
        rows.append(
            f"<tr class='span'><td>{escape(line.service)}</td>"
            f"<td><span class=muted>{escape(line.prefix)}</span>{escape(line.label)}</td>"
            f"<td class=num>+{duration_text(line.start)}</td><td class=num>{took}</td>"
            f"<td><div class=bar>{bar}</div></td><td>{escape(line.status)}</td></tr>"
        )
    return (
        f"<section class='waterfall' data-trace='{fall.trace_id}'><h2>trace {fall.trace_id} ·"
        f" {fall.spans} spans · {duration_text(total)}</h2><table><tr><th>service</th><th>span</th>"
        "<th class=num>start</th><th class=num>took</th><th>timeline</th><th></th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def not_found_page(request_id: str, span_files: list[str]) -> str:
    """The answer for a request id no span file and no store knows."""
    where = ", ".join(span_files) or "no span files (start the console with --spans FILE)"
    return page(
        "unknown request",
        f"<section id='unknown'><h2>no request {escape(request_id)!s}</h2><p>No span in"
        f" {escape(where)} names this id. Requests show here once a worker that writes spans"
        " (<code>agentqueue worker --trace-file FILE</code>) has handled them; check the id"
        " (<code>agentqueue call</code> prints it).</p></section>",
    )


def _clock(ns: int) -> str:
    seconds = ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"
