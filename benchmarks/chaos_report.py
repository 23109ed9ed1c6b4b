"""What a chaos run measured, from three independent records, and the table that shows it.

- the client's outcomes: which requests were sent and which answer each got (and the ids found
  in the dead-letter queue);
- the handler log (`kind session seq event_id pid` per handler run): duplicates delivered;
- the committed session states in the store: which sequence numbers each session applied, in
  which order, and how often: duplicate effects, order violations, answers without an effect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agentqueue import Client
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.topology import REQUESTS, Topology
from agentqueue.protocol.codec import decode
from agentqueue.protocol.errors import ProtocolError
from agentqueue.workers.session_store import open_store
from benchmarks.chaos_app import parse_request_text
from benchmarks.chaos_load import Outcome

log = logging.getLogger("benchmarks.chaos")

CENSUS_WAIT = 30.0  # seconds to read what a partition queue still holds


@dataclass
class ChaosEvents:
    """What the chaos driver did to the run."""

    worker_kills: dict[str, int] = field(default_factory=lambda: {"agents": 0, "tools": 0})
    respawn: str = "each restarted at once"  # what became of a killed worker
    kills_skipped: int = 0  # kills due that found no worker (instance) to kill
    skipped_when: str = "none was serving"  # why a due kill found none
    broker_restarts: list[float] = field(default_factory=list)  # seconds each took
    client_cuts: list[int] = field(default_factory=list)  # connections dropped by each cut
    node_kills: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, cut/restart/node)


@dataclass
class ChaosResult:
    """The numbers of one run; `passed` when every request (all are healthy) got its one final
    answer, in order, with its effect applied once."""

    title: str
    setup: str
    seconds: float
    sent: int
    final: int
    other_answers: Counter[str]
    tool_errors: int
    agent_reruns: int
    tool_reruns: int
    duplicate_effects: int
    order_violations: int
    final_without_effect: int
    dead_lettered: int
    answered_late: Counter[str]  # answers a worker sent after the client had given up, by kind
    lost: int
    not_published: int
    publish_retries: int
    latencies: list[float]
    events: ChaosEvents
    examples: list[str] = field(default_factory=list)
    lost_requests: list[str] = field(default_factory=list)  # each lost one: handled? where?
    faults_at: list[str] = field(default_factory=list)  # e.g. "node 512 s" (since the load began)

    @property
    def passed(self) -> bool:
        """Nothing lost, failed, timed out or dead-lettered; no duplicate effect, order
        violation or effect-less answer. Every chaos request is healthy, so a dead letter or a
        failed answer is the system's fault, not the request's."""
        return not (
            self.lost
            or sum(self.answered_late.values())
            or self.dead_lettered
            or sum(self.other_answers.values())
            or self.tool_errors
            or self.duplicate_effects
            or self.order_violations
            or self.final_without_effect
        )


def committed_sequence(state_json: str | None, session: str) -> list[int]:
    """The sequence numbers a session's committed agent memory applied, in memory order."""
    if not state_json:
        return []
    applied = []
    for message in json.loads(state_json).get("context", []):
        if message.get("role") != "user":
            continue
        for block in message.get("content", []):
            args = (
                parse_request_text(block.get("text", "")) if block.get("type") == "text" else None
            )
            if args is not None and args.get("session") == session:
                applied.append(int(args["seq"]))
    return applied


async def committed_sequences(store_url: str, sessions: set[str]) -> dict[str, list[int]]:
    """Each session's applied sequence numbers, read from its committed state."""
    store = open_store(store_url)
    try:
        return {s: committed_sequence(await store.load_state(s), s) for s in sorted(sessions)}
    finally:
        await store.close()


async def stored_answers(store_url: str, outcomes: Iterable[Outcome]) -> set[str]:
    """The requests among `outcomes` not answered whose reply the session store holds (their
    run committed): the answer existed, and was lost on its way to the client."""
    store = open_store(store_url)
    try:
        return {
            o.request_id
            for o in outcomes
            if o.published
            and not o.answered
            and await store.handled(o.session, o.request_id) is not None
        }
    finally:
        await store.close()


def lost_trail(
    o: Outcome,
    runs: Mapping[str, list[int]],
    stored: set[str],
    queued: Mapping[str, str],
    started: float,
) -> str:
    """For one lost request: when it was published, whether a handler ran it (and where), and
    where it or its answer was last seen."""
    pids = runs.get(o.request_id, [])
    handled = (
        f"handled {len(pids)}x (pids {', '.join(str(p) for p in sorted(set(pids)))})"
        if pids
        else "never handled"
    )
    if o.request_id in stored:
        seen = "answer last seen committed in the session store, never received by the client"
    elif o.request_id in queued:
        seen = f"still queued at the end: {queued[o.request_id]}"
    elif pids:
        seen = "no answer stored, not queued: its run never committed and the broker dropped it"
    else:
        seen = "no answer anywhere, not queued: it never reached a handler (dropped)"
    at = f" at {o.published_at - started:.0f} s" if o.published_at is not None else ""
    return f"lost: {o.request_id} (published {o.publish_attempts}x{at}): {handled}; {seen}"


async def still_queued(client: Client, topology: Topology) -> dict[str, str]:
    """The requests left in their partition queues once the workers stopped, with the queue
    and the broker's delivery count of each (drained: the run's namespace is its own).

    Read by a consumer of our own: a quorum queue with a single active consumer refuses
    basic.get."""
    found: dict[str, str] = {}
    for queue in topology.queues(REQUESTS):
        left = (await client.broker.stats(queue)).ready
        if not left:
            continue
        unreadable = 0
        async with await client.broker.consume(queue, prefetch=left) as subscription:
            with anyio.move_on_after(CENSUS_WAIT):
                async for delivery in subscription:
                    try:
                        found[decode(delivery.body).id] = (
                            f"{queue}, delivered {delivery.delivery_count}x by the broker"
                        )
                    except ProtocolError:
                        unreadable += 1
                    await delivery.ack()
                    left -= 1
                    if not left:
                        break
        if unreadable:
            log.warning("census: %d messages in %s are no envelope", unreadable, queue)
        if left:
            log.warning(
                "census: %d messages of %s not delivered within %.0f s: they are not in the"
                " report's 'still queued' trail",
                left,
                queue,
                CENSUS_WAIT,
            )
    return found


async def dead_lettered(client: Client, topology: Topology) -> dict[str, str]:
    """The envelope ids in the dead-letter queue and why each is there (drained: the run's
    namespace is its own)."""
    ids: dict[str, str] = {}
    while (delivery := await client.broker.get(topology.dead_letter_queue)) is not None:
        record = read_dead_letter(delivery.body, delivery.queue)
        envelope_id = record.envelope_id
        if envelope_id is None:  # dead-lettered by RabbitMQ itself: the payload is the envelope
            with contextlib.suppress(ProtocolError):
                envelope_id = decode(record.payload).id
        if envelope_id is not None:
            ids[envelope_id] = record.reason or "(no reason given)"
        await delivery.ack()
    return ids


def read_handler_log(path: Path) -> list[tuple[str, str, int, str, int]]:
    """The handler log's records: (kind, session, seq, event id, pid)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        kind, session, seq, event_id, pid = line.split()
        records.append((kind, session, int(seq), event_id, int(pid)))
    return records


def measure(
    *,
    title: str,
    setup: str,
    seconds: float,
    outcomes: Mapping[str, Outcome],
    handler_log: Iterable[tuple[str, str, int, str, int]],
    committed: Mapping[str, list[int]],
    dead_lettered: Mapping[str, str],
    publish_retries: int,
    events: ChaosEvents,
    stored: set[str] | None = None,
    queued: Mapping[str, str] | None = None,
    load_started: float = 0.0,
) -> ChaosResult:
    """Put the three records side by side."""
    examples: list[str] = []
    runs = Counter((kind, event_id) for kind, _, _, event_id, _ in handler_log)
    agent_reruns = sum(n - 1 for (kind, _), n in runs.items() if kind == "agent")
    tool_reruns = sum(n - 1 for (kind, _), n in runs.items() if kind == "tool")

    duplicate_effects = order_violations = 0
    for session, applied in committed.items():
        highest = -1
        seen: set[int] = set()
        for seq in applied:
            if seq in seen:
                duplicate_effects += 1
                examples.append(f"duplicate effect: {session} applied seq {seq} again ({applied})")
            elif seq < highest:
                order_violations += 1
                examples.append(f"order violation: {session} applied seq {seq} after {highest}")
            seen.add(seq)
            highest = max(highest, seq)

    sent = [o for o in outcomes.values() if o.published]
    final = [o for o in sent if o.kind == "final"]
    without_effect = [o for o in final if o.seq not in set(committed.get(o.session, []))]
    examples += [f"final answer but no effect: {o.request_id}" for o in without_effect[:5]]
    tool_failed = [o for o in final if "failed" in (o.text or "")]
    examples += [f"failed tool call in {o.request_id}: {o.text!r}"[:200] for o in tool_failed[:3]]
    examples += [f"dead-lettered {i}: {why}"[:200] for i, why in list(dead_lettered.items())[:3]]
    late = [o for o in sent if not o.answered and o.late_kind is not None]
    lost = [
        o
        for o in sent
        if not o.answered and o.late_kind is None and o.request_id not in dead_lettered
    ]
    handled_by: dict[str, list[int]] = {}
    for kind, _, _, event_id, pid in handler_log:
        if kind == "agent":
            handled_by.setdefault(event_id, []).append(pid)
    trails = [lost_trail(o, handled_by, stored or set(), queued or {}, load_started) for o in lost]

    return ChaosResult(
        title=title,
        setup=setup,
        seconds=seconds,
        sent=len(sent),
        final=len(final),
        other_answers=Counter(o.kind for o in sent if o.answered and o.kind != "final"),
        tool_errors=len(tool_failed),
        agent_reruns=agent_reruns,
        tool_reruns=tool_reruns,
        duplicate_effects=duplicate_effects,
        order_violations=order_violations,
        final_without_effect=len(without_effect),
        dead_lettered=len(dead_lettered.keys() & outcomes.keys()),
        answered_late=Counter(o.late_kind for o in late if o.late_kind),
        lost=len(lost),
        not_published=len(outcomes) - len(sent),
        publish_retries=publish_retries,
        latencies=[o.seconds for o in sent if o.seconds is not None],
        events=events,
        examples=examples[:20],
        lost_requests=trails,
        faults_at=[f"{name} {at - load_started:.0f} s" for at, name in events.timeline],
    )


def render(result: ChaosResult) -> str:
    """The run as a Markdown section: setup, chaos, the table, and the verdict."""
    r, e = result, result.events
    others = ", ".join(f"{k} {n}" for k, n in sorted(r.other_answers.items())) or "none"
    lat = sorted(r.latencies)
    p50 = statistics.median(lat) if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
    restarts = ", ".join(f"{s:.1f} s" for s in e.broker_restarts) or "-"
    kills = ", ".join(f"{role} {n}" for role, n in e.worker_kills.items())
    rows = [
        ("requests sent", r.sent),
        ("final results received", r.final),
        ("other answers (failed / timed_out / cancelled)", others),
        ("final answers that report a failed tool call", r.tool_errors),
        ("duplicates delivered: agent turns run again", r.agent_reruns),
        ("duplicates delivered: tool calls run again", r.tool_reruns),
        ("**duplicate effects** (a seq applied twice in the committed state)", r.duplicate_effects),
        ("**order violations** (a seq applied after a later one)", r.order_violations),
        ("**final answers without an effect** in the committed state", r.final_without_effect),
        ("dead-lettered", r.dead_lettered),
        (
            "answered after the client gave up (past the deadline and its grace)",
            ", ".join(f"{k} {n}" for k, n in sorted(r.answered_late.items())) or 0,
        ),
        ("**lost** (sent - answered - answered late - dead-lettered)", r.lost),
    ]
    lines = [
        f"## {r.title}",
        "",
        r.setup,
        "",
        f"Chaos: {sum(e.worker_kills.values())} worker SIGKILLs ({kills}), {e.respawn}"
        f"{f' ({e.kills_skipped} more due when {e.skipped_when})' if e.kills_skipped else ''};"
        f" broker restarts: "
        f"{len(e.broker_restarts)} ({restarts}); client connection cuts: {len(e.client_cuts)}"
        f" ({sum(e.client_cuts)} connections dropped); broker node SIGKILLs: "
        f"{', '.join(e.node_kills) or 'none'}.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"{r.seconds:.0f} s, {r.final / r.seconds if r.seconds else 0:.1f} final answers/s;"
        f" latency p50 {p50:.2f} s, p99 {p99:.2f} s; publishes repeated with the same id:"
        f" {r.publish_retries}; requests never published: {r.not_published}.",
        "",
        f"**{'PASS' if r.passed else 'FAIL'}**: lost {r.lost}, answered too late"
        f" {sum(r.answered_late.values())}, dead-lettered {r.dead_lettered},"
        f" other answers {sum(r.other_answers.values())}, failed tool calls {r.tool_errors},"
        f" duplicate effects {r.duplicate_effects}, order violations {r.order_violations},"
        f" final answers without an effect {r.final_without_effect}.",
    ]
    if r.examples:
        lines += ["", "First problems seen:", "", *(f"- {x}" for x in r.examples)]
    if r.lost_requests:
        lines += ["", "Every lost request:", "", *(f"- {x}" for x in r.lost_requests)]
        if r.faults_at:
            lines += ["", f"Faults, in seconds since the load began: {', '.join(r.faults_at)}."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, title: str, section: str) -> None:
    """Put `section` into the Markdown file at `path`, replacing an earlier one of that title."""
    header = (
        "# Chaos runs\n\n"
        "Written by `benchmarks/chaos.py`; each section is the latest run of its kind.\n"
    )
    sections: dict[str, str] = {}
    if path.exists():
        for chunk in path.read_text().split("\n## ")[1:]:
            name = chunk.split("\n", 1)[0]
            sections[name] = "## " + chunk.rstrip("\n") + "\n"
    sections[title] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join("\n" + sections[name] for name in sorted(sections)))
