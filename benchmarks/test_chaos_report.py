"""The chaos report says, for every lost request, whether it ran and where it or its answer was."""

from __future__ import annotations

from benchmarks.chaos_load import Outcome
from benchmarks.chaos_report import ChaosEvents, measure, render


def test_every_lost_request_is_reported_with_its_runs_and_where_it_was_last_seen() -> None:
    def sent(session: str, seq: int, rid: str, attempts: int = 1, **kw: object) -> Outcome:
        return Outcome(
            session, seq, rid, published=True, publish_attempts=attempts,
            published_at=100.0 + seq, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    answered = sent("s", 0, "r0", kind="final")
    stored, died, waiting = sent("s", 1, "r1"), sent("s", 2, "r2", 2), sent("s", 3, "r3")
    never = sent("t", 0, "r4")
    late = sent("t", 1, "r5", late_kind="timed_out")  # answered once the client had given up
    events = ChaosEvents(timeline=[(130.0, "cut"), (160.5, "node")])
    result = measure(
        title="t", setup="", seconds=1.0,
        outcomes={o.request_id: o for o in (answered, stored, died, waiting, never, late)},
        handler_log=[("agent", "s", 0, "r0", 7), ("agent", "s", 1, "r1", 7),
                     ("agent", "s", 2, "r2", 8), ("agent", "s", 2, "r2", 9),
                     ("agent", "s", 3, "r3", 9)],
        committed={"s": [0, 1]}, dead_lettered={}, publish_retries=0, events=events,
        stored={"r1"}, queued={"r3": "chaos-requests-5, delivered 3x by the broker"},
        load_started=100.0,
    )  # fmt: skip
    assert result.lost == 4
    assert result.answered_late == {"timed_out": 1} and not result.passed
    assert result.lost_requests == [
        "lost: r1 (published 1x at 1 s): handled 1x (pids 7); answer last seen committed in the"
        " session store, never received by the client",
        "lost: r2 (published 2x at 2 s): handled 2x (pids 8, 9); no answer stored, not queued:"
        " its run never committed and the broker dropped it",
        "lost: r3 (published 1x at 3 s): handled 1x (pids 9); still queued at the end:"
        " chaos-requests-5, delivered 3x by the broker",
        "lost: r4 (published 1x at 0 s): never handled; no answer anywhere, not queued: it never"
        " reached a handler (dropped)",
    ]
    table = render(result)
    assert "Every lost request:" in table
    late_row = (
        "| answered after the client gave up (past the deadline and its grace) | timed_out 1 |"
    )
    assert late_row in table
    assert "Faults, in seconds since the load began: cut 30 s, node 60 s." in table
