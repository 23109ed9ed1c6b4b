"""Stores are bounded: handled records and attempt counts expire, idle sessions only if asked."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio as redis

from agentqueue.protocol import new_id
from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.session_store import DEFAULT_RETENTION, Expired, SessionStore, open_store
from agentqueue.workers.sqlite_store import SQLiteSessionStore

DAY = 24 * 3600.0


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.05)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    """Stores whose expiry pass can be asked to run as of a given time."""
    url = f"memory://{new_id()[:8]}" if request.param == "memory" else f"sqlite:///{tmp_path}/s.db"
    s = open_store(url, retention=DAY, session_ttl=7 * DAY)
    yield s
    await s.close()


async def committed(store: SessionStore, session: str, event: str, state: str = "{}") -> None:
    lease = await store.acquire(session, "w", 30)
    assert lease is not None
    await store.commit(lease, state, event, b"reply")
    await store.release(lease)


def test_the_default_retention_is_seven_days_and_sessions_are_kept_by_default() -> None:
    s = open_store(f"memory://{new_id()[:8]}")
    assert DEFAULT_RETENTION == 7 * DAY
    assert (s.retention, s.session_ttl) == (7 * DAY, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"retention": 0},
            "store retention must be a positive number of seconds, got 0 (default 604800, 7 days)",
        ),
        (
            {"session_ttl": -5},
            "session idle TTL must be a positive number of seconds or 0 (off), got -5",
        ),
    ],
)
def test_a_ttl_that_is_not_a_positive_duration_is_refused(
    options: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        open_store("memory://", **options)
    assert str(caught.value) == message


async def test_handled_records_and_attempt_counts_expire_after_the_retention(
    store: SessionStore,
) -> None:
    await committed(store, "s1", "e-handled")
    assert await store.count_attempt("s1", "e-tried") == 1
    now = time.time()
    assert await store.expire(now + DAY - 60) == Expired()  # not yet
    assert await store.handled("s1", "e-handled") == b"reply"
    assert await store.expire(now + DAY + 60) == Expired(handled=1, attempts=1)
    assert await store.handled("s1", "e-handled") is None
    assert await store.count_attempt("s1", "e-tried") == 1  # counted afresh
    assert await store.load_state("s1") == "{}"  # the state is not theirs to take


async def test_an_idle_session_expires_only_after_its_ttl_and_never_while_leased(
    store: SessionStore,
) -> None:
    await committed(store, "idle", "e1", state='{"n": 1}')
    now = time.time()
    assert (await store.expire(now + 6 * DAY)).sessions == 0
    assert await store.load_state("idle") == '{"n": 1}'
    held = await store.acquire("busy", "w", 8 * DAY)  # a lease longer than the idle TTL
    assert held is not None
    expired = await store.expire(now + 7 * DAY + 60)
    assert expired.sessions == 1
    assert await store.load_state("idle") is None
    assert await store.acquire("busy", "other", 30) is None  # still its holder's


async def test_a_worker_that_stalled_through_a_session_expiry_still_cannot_write(
    store: SessionStore,
) -> None:
    stale = await store.acquire("s", "worker-a", 0.05)
    assert stale is not None
    await store.commit(stale, '{"n": 1}', "e0", b"x")
    await store.release(stale)
    assert (await store.expire(time.time() + 8 * DAY)).sessions == 1
    fresh = await store.acquire("s", "worker-b", 30)
    assert fresh is not None and fresh.token > stale.token
    with pytest.raises(LeaseLost):
        await store.commit(stale, '{"from": "a"}', "e", b"x")


async def test_sessions_never_expire_without_an_idle_ttl(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        await committed(s, "s1", "e1", state='{"kept": true}')
        assert (await s.expire(time.time() + 10 * 365 * DAY)).sessions == 0
        assert await s.load_state("s1") == '{"kept": true}'
    finally:
        await s.close()


async def test_sqlite_writes_purge_now_and_then_without_an_expiry_task(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/s.db", retention=0.2)
    try:
        await s.count_attempt("s", "old")
        writes = iter(range(1_000_000))

        async def old_row_gone() -> bool:
            await s.count_attempt("s", f"new-{next(writes)}")  # a worker's ordinary writes
            with sqlite3.connect(tmp_path / "s.db") as db:
                query = "SELECT COUNT(*) FROM attempts WHERE event_id='old'"
                return db.execute(query).fetchone()[0] == 0

        await eventually(old_row_gone)
    finally:
        await s.close()


def test_a_file_from_before_expiry_keeps_its_rows_dated_to_when_it_is_first_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE sessions (session_id TEXT PRIMARY KEY, state TEXT,
                token INTEGER NOT NULL DEFAULT 0, owner TEXT, expires_at REAL NOT NULL DEFAULT 0);
            CREATE TABLE handled (session_id TEXT NOT NULL, event_id TEXT NOT NULL,
                result BLOB NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (session_id, event_id));
            CREATE TABLE attempts (session_id TEXT NOT NULL, event_id TEXT NOT NULL,
                count INTEGER NOT NULL, PRIMARY KEY (session_id, event_id));
            INSERT INTO sessions VALUES ('s', '{}', 4, NULL, 0);
            INSERT INTO handled VALUES ('s', 'e1', x'6f6b', 1);
            INSERT INTO attempts VALUES ('s', 'e2', 2);
            """
        )

    async def reopen() -> tuple[Expired, Expired, bytes | None]:
        store = SQLiteSessionStore(f"sqlite:///{path}", retention=DAY)
        try:
            soon = await store.expire(time.time() + 60)
            kept = await store.handled("s", "e1")
            later = await store.expire(time.time() + DAY + 60)
            return soon, later, kept
        finally:
            await store.close()

    soon, later, kept = anyio.run(reopen)
    assert soon == Expired() and kept == b"ok"
    assert later == Expired(handled=1, attempts=1)


# --- Redis: its own key expiry does the passes ---------------------------------------------------


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def keys(client: redis.Redis, pattern: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=pattern, count=1000)]


@pytest.mark.broker
async def test_redis_attempt_counts_of_1000_idempotent_tool_calls_expire_by_themselves(
    redis_url: str, raw_redis: redis.Redis
) -> None:
    prefix = f"ret-{new_id()[:8]}"
    store = open_store(redis_url, retention=DAY)
    short = open_store(redis_url, retention=1.0)
    store._prefix = short._prefix = prefix  # type: ignore[attr-defined]
    try:
        for n in range(1000):  # what the FC handler records for each idempotent tool call
            assert await short.count_attempt(f"s{n % 7}", f"ping-{n}") == 1
        assert await store.count_attempt("kept", "e") == 1
        ttl = await raw_redis.pttl(f"{prefix}:{{kept}}:attempt:e")
        assert 0 < ttl <= DAY * 1000

        async def only_the_long_lived_one_left() -> bool:
            return len(await keys(raw_redis, f"{prefix}:*:attempt:*")) == 1

        await eventually(only_the_long_lived_one_left)
    finally:
        await store.close()
        await short.close()


@pytest.mark.broker
async def test_redis_handled_records_older_than_the_retention_go_at_the_next_write(
    redis_url: str, raw_redis: redis.Redis
) -> None:
    store = open_store(redis_url, retention=0.3)
    session = f"r-{new_id()[:8]}"
    try:
        await committed(store, session, "first")
        assert await store.handled(session, "first") == b"reply"
        writes = iter(range(1_000_000))

        async def first_forgotten() -> bool:
            await committed(store, session, f"later-{next(writes)}")
            return await store.handled(session, "first") is None

        await eventually(first_forgotten)
        ttl = await raw_redis.pttl(f"agentqueue:{{{session}}}:handled")
        assert 0 < ttl <= 300
    finally:
        await store.close()


@pytest.mark.broker
async def test_redis_keeps_a_session_without_an_idle_ttl_and_expires_it_with_one(
    redis_url: str, raw_redis: redis.Redis
) -> None:
    kept, idle = f"k-{new_id()[:8]}", f"i-{new_id()[:8]}"
    plain = open_store(redis_url)
    expiring = open_store(redis_url, session_ttl=0.5)
    try:
        await committed(plain, kept, "e")
        assert await raw_redis.pttl(f"agentqueue:{{{kept}}}:session") == -1  # no expiry
        stale = await expiring.acquire(idle, "worker-a", 0.2)
        assert stale is not None
        await expiring.commit(stale, '{"n": 1}', "e", b"x")
        await expiring.release(stale)

        async def state_gone() -> bool:
            return await expiring.load_state(idle) is None

        await eventually(state_gone)
        fresh = await expiring.acquire(idle, "worker-b", 30)
        assert fresh is not None and fresh.token > stale.token
        assert await raw_redis.pttl(f"agentqueue:{{{idle}}}:session") > 0
    finally:
        await plain.close()
        await expiring.close()
