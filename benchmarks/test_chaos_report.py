"""The chaos report says, for every lost request, whether it ran and where its answer was."""

from __future__ import annotations

from benchmarks.chaos_load import Outcome
from benchmarks.chaos_report import ChaosEvents, measure, render


def test_every_lost_request_is_reported_with_its_runs_and_where_its_answer_was_last_seen() -> None:
    answered = Outcome("s", 0, "r0", published=True, publish_attempts=1, kind="final")
    stored = Outcome("s", 1, "r1", published=True, publish_attempts=1)
    died = Outcome("s", 2, "r2", published=True, publish_attempts=2)
    never = Outcome("t", 0, "r3", published=True, publish_attempts=1)
    result = measure(
        title="t", setup="", seconds=1.0,
        outcomes={o.request_id: o for o in (answered, stored, died, never)},
        handler_log=[("agent", "s", 0, "r0", 7), ("agent", "s", 1, "r1", 7),
                     ("agent", "s", 2, "r2", 8), ("agent", "s", 2, "r2", 9)],
        committed={"s": [0, 1]}, dead_lettered={}, publish_retries=0, events=ChaosEvents(),
        stored={"r1"},
    )  # fmt: skip
    assert result.lost == 3
    assert result.lost_requests == [
        "lost: r1 (published 1x): handled 1x (pids 7); answer last seen committed in the"
        " session store, never received by the client",
        "lost: r2 (published 2x): handled 2x (pids 8, 9); no answer stored: its run never"
        " committed (the worker died mid-run?)",
        "lost: r3 (published 1x): never handled; no answer anywhere: it never reached a"
        " handler (still queued, or dropped)",
    ]
    assert "Every lost request:" in render(result)
