"""The stream log on every store: order, repeats, the count and time bounds, live following."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from agentqueue import StreamNotKept
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.protocol import Envelope, encode, new_id
from agentqueue.protocol.messages import ResultEvent
from agentqueue.workers.stream_log import Kept, StreamLog, follow, open_stream_log, replay


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.broker)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{new_id()[:8]}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    return request.getfixturevalue("redis_url")  # type: ignore[no-any-return]


@asynccontextmanager
async def opened(url: str, **bounds: float) -> AsyncIterator[StreamLog]:
    log = open_stream_log(url, **bounds)  # type: ignore[arg-type]
    try:
        yield log
    finally:
        await log.close()


def delta(rid: str, seq: int, attempt: int = 1, *, restart: bool = False) -> Kept:
    text = "" if restart else f"w{seq} "
    return Kept.of(ResultEvent(rid, "delta", seq=seq, text=text, attempt=attempt, restart=restart))


def final(rid: str, seq: int, attempt: int = 1) -> Kept:
    return Kept.of(ResultEvent(rid, "final", seq=seq, text="done", attempt=attempt))


async def test_events_are_kept_in_order_and_a_repeated_seq_once(store_url: str) -> None:
    rid = new_id()
    async with opened(store_url) as log:
        assert await log.open(rid) == (0, 0)
        await log.append(rid, delta(rid, 1))
        await log.append_many(rid, [delta(rid, 2), delta(rid, 2), delta(rid, 3, attempt=2)])
        assert [k.seq for k in await log.read(rid, 0) or []] == [1, 2, 3]
        assert [k.seq for k in await log.read(rid, 2) or []] == [3]
        assert await log.open(rid) == (3, 2)  # a worker that runs it again numbers on
        assert await log.read("never-started", 0) is None


async def test_a_follower_replays_then_follows_live_to_the_terminal_event(store_url: str) -> None:
    rid = new_id()
    async with opened(store_url) as log:
        await log.open(rid)
        await log.append(rid, delta(rid, 1))
        await log.append(rid, delta(rid, 2))
        got: list[ResultEvent] = []
        async with anyio.create_task_group() as tg:

            async def attach() -> None:
                async for event in follow(log, rid, after=1, timeout=30):
                    got.append(event)

            tg.start_soon(attach)
            with anyio.fail_after(10):
                while not got:
                    await anyio.sleep(0.01)
            await log.append(rid, delta(rid, 3))
            await log.append(rid, final(rid, 4))
    assert [(e.seq, e.kind) for e in got] == [(2, "delta"), (3, "delta"), (4, "final")]


async def test_a_replay_starts_at_the_newest_restart_marker(store_url: str) -> None:
    rid = new_id()
    async with opened(store_url) as log:
        await log.open(rid)
        for kept in (
            delta(rid, 1),
            delta(rid, 2),
            delta(rid, 3, 2, restart=True),
            delta(rid, 4, 2),
        ):
            await log.append(rid, kept)
        from_start = await replay(log, rid, 0)
        mid_first = await replay(log, rid, 1)
        in_second = await replay(log, rid, 3)
    assert [(e.seq, e.attempt, e.restart) for e in from_start] == [(3, 2, True), (4, 2, False)]
    assert mid_first == from_start  # it missed the restart: it gets it, not the void deltas
    assert [e.seq for e in in_second] == [4]


async def test_only_the_newest_events_are_kept_and_an_attach_before_them_is_refused(
    store_url: str,
) -> None:
    rid = new_id()
    async with opened(store_url, max_events=3) as log:
        await log.open(rid)
        for seq in range(1, 6):
            await log.append(rid, delta(rid, seq))
        kept = [k.seq for k in await log.read(rid, 0) or []]
        with pytest.raises(StreamNotKept) as caught:
            await replay(log, rid, 0)
        assert [e.seq for e in await replay(log, rid, 2)] == [3, 4, 5]
    assert kept == [3, 4, 5]
    assert str(caught.value) == (
        f"events 1 to 2 of request {rid!r} are no longer kept (a request keeps its last 3,"
        " setting stream_events); attach with after=2 or later"
    )


async def test_attaching_to_an_expired_request_is_a_clear_error(store_url: str) -> None:
    rid = new_id()
    async with opened(store_url, retention=1) as log:
        await log.open(rid)
        await log.append(rid, final(rid, 1))
        assert [e.kind for e in await replay(log, rid, 0)] == ["final"]
        with anyio.fail_after(10):
            while await log.read(rid, 0) is not None:  # until the store let it go
                await anyio.sleep(0.05)
        with pytest.raises(StreamNotKept) as caught:
            async for _ in follow(log, rid):
                pass
    assert str(caught.value) == (
        f"no events are kept for request {rid!r}: it is unknown to the store {store_url}, not"
        " started yet, or finished more than 1 s ago (setting stream_retention)"
    )


async def test_the_reply_router_passes_a_retried_attempt_on_and_drops_only_true_repeats() -> None:
    # A worker that numbers each attempt from 1 (older ones did): attempt 2's seq 1 and 2 are
    # new events, not repeats of attempt 1's; a redelivered copy of one is dropped.
    async with MemoryBroker(f"memory://rr-{new_id()[:8]}") as broker:
        queue = "replies-test"
        await broker.declare_reply_queue(queue)
        router = ReplyRouter(broker, queue)
        inbox = router.expect("r1")
        sent = [
            ResultEvent("r1", "delta", seq=1, text="a", attempt=1),
            ResultEvent("r1", "delta", seq=1, text="a", attempt=1),  # redelivered
            ResultEvent("r1", "delta", seq=1, attempt=2, restart=True),
            ResultEvent("r1", "delta", seq=2, text="b", attempt=2),
            ResultEvent("r1", "final", seq=3, text="b", attempt=2),
        ]
        for body in sent:
            envelope = Envelope(id=new_id(), session_id="s", correlation_id="r1", body=body)
            await broker.publish(queue, encode(envelope))
        async with anyio.create_task_group() as tg:
            await tg.start(router.run)
            got = []
            with anyio.fail_after(10):
                while len(got) < 4:
                    got.append((await inbox.get()).body)
            tg.cancel_scope.cancel()
    assert got == [sent[0], *sent[2:]]
