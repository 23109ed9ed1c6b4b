"""Every session store keeps state with handled ids atomically and fences stale owners."""

from __future__ import annotations

import multiprocessing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentqueue.protocol import new_id
from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.session_store import SessionStore, open_store
from agentqueue.workers.sqlite_store import SQLiteSessionStore


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.broker)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        url = f"memory://{new_id()[:8]}"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/sessions.db"
    else:
        url = request.getfixturevalue("redis_url")
    s = open_store(url)
    yield s
    await s.close()


async def test_state_and_the_handled_id_are_saved_together(store: SessionStore) -> None:
    session = f"s-{new_id()[:6]}"
    lease = await store.acquire(session, "worker-a", ttl=10)
    assert lease is not None
    await store.commit(lease, '{"turns": 1}', "evt-1", b"reply-1")
    assert await store.load_state(session) == '{"turns": 1}'
    assert await store.handled(session, "evt-1") == b"reply-1"
    assert await store.handled(session, "evt-2") is None
    await store.commit(lease, None, "evt-2", b"reply-2")  # None keeps the state
    assert await store.load_state(session) == '{"turns": 1}'


async def test_a_live_lease_keeps_other_workers_out(store: SessionStore) -> None:
    session = f"s-{new_id()[:6]}"
    lease = await store.acquire(session, "worker-a", ttl=10)
    assert lease is not None
    assert await store.acquire(session, "worker-b", ttl=10) is None
    await store.release(lease)
    taken = await store.acquire(session, "worker-b", ttl=10)
    assert taken is not None and taken.token > lease.token


async def test_a_worker_that_lost_its_lease_cannot_overwrite_the_session(
    store: SessionStore,
) -> None:
    session = f"s-{new_id()[:6]}"
    stale = await store.acquire(session, "worker-a", ttl=0.3)
    assert stale is not None
    await anyio.sleep(0.5)  # worker-a stalls past its lease...
    fresh = await store.acquire(session, "worker-b", ttl=10)  # ...and worker-b takes the session
    assert fresh is not None
    await store.commit(fresh, '{"by": "b"}', "evt-b", b"b")
    with pytest.raises(LeaseLost) as info:
        await store.commit(stale, '{"by": "a"}', "evt-a", b"a")
    assert str(info.value) == (
        f"lease {stale.token} on session {session!r} is no longer held by 'worker-a'"
        f" (newest token {fresh.token}); the write was refused"
    )
    assert await store.load_state(session) == '{"by": "b"}'
    assert await store.handled(session, "evt-a") is None


async def test_an_expired_lease_cannot_write_even_if_nobody_took_over(store: SessionStore) -> None:
    session = f"s-{new_id()[:6]}"
    lease = await store.acquire(session, "worker-a", ttl=0.2)
    assert lease is not None
    await anyio.sleep(0.4)  # past its 0.2 s lease: the expiry under test
    with pytest.raises(LeaseLost):
        await store.commit(lease, "{}", "evt", b"x")


async def test_attempts_are_counted_per_event_until_it_is_handled(store: SessionStore) -> None:
    session = f"s-{new_id()[:6]}"
    assert [await store.count_attempt(session, "evt") for _ in range(3)] == [1, 2, 3]
    lease = await store.acquire(session, "w", ttl=10)
    assert lease is not None
    await store.commit(lease, None, "evt", b"done")
    assert await store.count_attempt(session, "evt") == 1


def _open_sqlite(url: str, start: Any, outcomes: Any) -> None:
    start.wait()  # all at the same moment, as workers started together
    try:
        SQLiteSessionStore(url)
    except Exception as exc:
        outcomes.put(repr(exc))
    else:
        outcomes.put("opened")


def test_workers_that_open_one_new_sqlite_file_together_all_get_it(tmp_path: Path) -> None:
    # 12 processes switch each new file to WAL at once: without waiting out the lock, some
    # failed "database is locked" and their worker exited.
    ctx = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for i in range(6):
        start, results = ctx.Barrier(12), ctx.Queue()
        url = f"sqlite:///{tmp_path}/s{i}.db"
        procs = [ctx.Process(target=_open_sqlite, args=(url, start, results)) for _ in range(12)]
        for proc in procs:
            proc.start()
        outcomes += [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join()
    assert set(outcomes) == {"opened"}


async def test_notes_keep_the_latest_value_per_key_and_only_the_most_recent_keys_of_a_kind(
    store: SessionStore,
) -> None:
    from agentqueue.workers import session_store

    kind = f"turns-{new_id()[:6]}"
    kept = session_store.NOTES_KEPT
    await store.put_note(kind, "s1", b"first")
    await store.put_note(kind, "s1", b"second")  # replaces
    assert await store.note(kind, "s1") == b"second"
    assert await store.note(kind, "nobody") is None
    for i in range(kept + 2):
        await store.put_note(kind, f"k{i}", str(i).encode())
    newest = await store.notes(kind, limit=3)
    assert [(n.key, n.value) for n in newest] == [
        (f"k{kept + 1}", str(kept + 1).encode()),
        (f"k{kept}", str(kept).encode()),
        (f"k{kept - 1}", str(kept - 1).encode()),
    ]
    assert newest[0].at >= newest[1].at >= newest[2].at > 0
    everything = await store.notes(kind, limit=10 * kept)
    assert len(everything) == kept
    assert await store.note(kind, "s1") is None and await store.note(kind, "k0") is None


async def test_an_artifact_put_under_a_key_is_read_back_and_an_unknown_key_is_none(
    store: SessionStore,
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 100
    await store.put_artifact("s1/shot.png", png)
    assert await store.get_artifact("s1/shot.png") == png
    assert await store.get_artifact("s1/other.png") is None
