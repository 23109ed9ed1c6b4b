"""`sqlite:///path`: sessions in one SQLite file, shared by the workers of one machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple
from urllib.parse import urlsplit

import anyio

from agentqueue.broker.urls import redact_url
from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.session_store import (
    DEFAULT_RETENTION,
    HANDLED_KEPT,
    NOTES_KEPT,
    PURGE_EVERY,
    Expired,
    Lease,
    Note,
    SessionStore,
    check_ttls,
    first_token,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    state TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    expires_at REAL NOT NULL DEFAULT 0,
    touched_at REAL
);
CREATE TABLE IF NOT EXISTS handled (
    session_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    result BLOB NOT NULL,
    seq INTEGER NOT NULL,
    at REAL,
    PRIMARY KEY (session_id, event_id)
);
CREATE TABLE IF NOT EXISTS notes (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS notes_at ON notes(kind, at);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    at REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    session_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    count INTEGER NOT NULL,
    at REAL,
    PRIMARY KEY (session_id, event_id)
);
"""
# When each row was last written, for the expiry passes; files from before they existed get the
# columns, dated to when the file is first opened (so nothing is taken for years old).
_TIMES = (("sessions", "touched_at"), ("handled", "at"), ("attempts", "at"))
_TIME_INDEXES = (
    "CREATE INDEX IF NOT EXISTS sessions_touched_at ON sessions(touched_at)",
    "CREATE INDEX IF NOT EXISTS handled_at ON handled(at)",
    "CREATE INDEX IF NOT EXISTS attempts_at ON attempts(at)",
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _add_times(db: sqlite3.Connection) -> None:
    now = time.time()
    for table, column in _TIMES:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} REAL")
        db.execute(f"UPDATE {table} SET {column}=? WHERE {column} IS NULL", (now,))
    for statement in _TIME_INDEXES:  # executescript would commit the open transaction
        db.execute(statement)


def retry_while_locked(statement: Callable[[], object], timeout: float = 10.0) -> None:
    """Run `statement`, again while SQLite says the database is locked (another process is
    switching it to WAL or creating it), for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_database(url: str, schema: str) -> tuple[Path, sqlite3.Connection]:
    """The file a `sqlite:///path` URL names (created if missing), in WAL mode, with `schema`'s
    tables; used from worker threads, in autocommit mode (transactions are explicit)."""
    path_part = urlsplit(url).path
    # sqlite:///rel/path -> "rel/path"; sqlite:////abs/path -> "/abs/path"
    path = Path(path_part[1:] if path_part.startswith("/") else path_part)
    if not str(path):
        raise ValueError(
            f"sqlite store URL {redact_url(url)!r} names no file; use sqlite:///sessions.db"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    # Workers that start together all switch the file to WAL and create the tables at once.
    # The busy handler (timeout=) does not cover every case: switching the journal mode can
    # fail "database is locked" at once, so the losers wait here and try again.
    retry_while_locked(lambda: db.execute("PRAGMA journal_mode=WAL"))
    db.execute("PRAGMA synchronous=NORMAL")
    retry_while_locked(lambda: db.executescript(schema))
    return path, db


class SQLiteSessionStore(SessionStore):
    """One SQLite file (WAL mode) used from worker threads; safe across processes."""

    def __init__(
        self,
        url: str,
        *,
        retention: float = DEFAULT_RETENTION,
        session_ttl: float | None = None,
    ) -> None:
        self.url = url
        self.session_ttl = check_ttls(retention, session_ttl)
        self.retention = retention
        self._purge_every = min(PURGE_EVERY, retention / 2)
        self._next_purge = time.monotonic() + self._purge_every
        self.path, self._db = open_database(url, _SCHEMA)
        self._lock = threading.Lock()
        retry_while_locked(lambda: self._locked(_add_times))

    async def _run(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        return await anyio.to_thread.run_sync(self._locked, fn, *args)

    def _locked(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db, *args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    async def put_artifact(self, key: str, data: bytes) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO artifacts(key, data, at) VALUES (?, ?, ?)",
                (key, data, time.time()),
            )

        await self._run(op)

    async def get_artifact(self, key: str) -> bytes | None:
        def op(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT data FROM artifacts WHERE key=?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(op)

    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        def op(db: sqlite3.Connection) -> Lease | None:
            now = time.time()
            db.execute(
                "INSERT OR IGNORE INTO sessions(session_id, token, touched_at) VALUES (?, ?, ?)",
                (session_id, first_token(now), now),
            )
            token, holder, expires = db.execute(
                "SELECT token, owner, expires_at FROM sessions WHERE session_id=?", (session_id,)
            ).fetchone()
            if holder not in (None, owner) and expires > now:
                return None
            db.execute(
                "UPDATE sessions SET token=?, owner=?, expires_at=?, touched_at=?"
                " WHERE session_id=?",
                (token + 1, owner, now + ttl, now, session_id),
            )
            return Lease(session_id, owner, token + 1, now + ttl)

        return await self._run(op)

    @staticmethod
    def _check(db: sqlite3.Connection, lease: Lease) -> None:
        row = db.execute(
            "SELECT token, expires_at FROM sessions WHERE session_id=?", (lease.session_id,)
        ).fetchone()
        if row is None or row[0] != lease.token or row[1] <= time.time():
            newest = row[0] if row else 0
            raise LeaseLost(
                f"lease {lease.token} on session {lease.session_id!r} is no longer held"
                f" by {lease.owner!r} (newest token {newest}); the write was refused"
            )

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        def op(db: sqlite3.Connection) -> Lease:
            self._check(db, lease)
            now = time.time()
            expires = now + ttl
            db.execute(
                "UPDATE sessions SET expires_at=?, touched_at=? WHERE session_id=?",
                (expires, now, lease.session_id),
            )
            return Lease(lease.session_id, lease.owner, lease.token, expires)

        return await self._run(op)

    async def release(self, lease: Lease) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE sessions SET owner=NULL, expires_at=0 WHERE session_id=? AND token=?",
                (lease.session_id, lease.token),
            )

        await self._run(op)

    async def load_state(self, session_id: str) -> str | None:
        def op(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT state FROM sessions WHERE session_id=?", (session_id,)
            ).fetchone()
            return row[0] if row else None

        return await self._run(op)

    async def handled(self, session_id: str, event_id: str) -> bytes | None:
        def op(db: sqlite3.Connection) -> bytes | None:
            row = db.execute(
                "SELECT result FROM handled WHERE session_id=? AND event_id=?",
                (session_id, event_id),
            ).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(op)

    async def commit(self, lease: Lease, state: str | None, event_id: str, result: bytes) -> None:
        def op(db: sqlite3.Connection) -> None:
            self._check(db, lease)
            now = time.time()
            db.execute(
                "UPDATE sessions SET state=COALESCE(?, state), touched_at=? WHERE session_id=?",
                (state, now, lease.session_id),
            )
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM handled WHERE session_id=?",
                (lease.session_id,),
            ).fetchone()[0]
            db.execute(
                "INSERT OR REPLACE INTO handled(session_id, event_id, result, seq, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (lease.session_id, event_id, result, seq, now),
            )
            db.execute(
                "DELETE FROM handled WHERE session_id=? AND seq <= ?",
                (lease.session_id, seq - HANDLED_KEPT),
            )
            db.execute(
                "DELETE FROM attempts WHERE session_id=? AND event_id=?",
                (lease.session_id, event_id),
            )
            self._purge_now_and_then(db, now)

        await self._run(op)

    async def count_attempt(self, session_id: str, event_id: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            now = time.time()
            db.execute(
                "INSERT INTO attempts(session_id, event_id, count, at) VALUES (?, ?, 1, ?)"
                " ON CONFLICT(session_id, event_id) DO UPDATE SET count = count + 1, at = ?",
                (session_id, event_id, now, now),
            )
            count = db.execute(
                "SELECT count FROM attempts WHERE session_id=? AND event_id=?",
                (session_id, event_id),
            ).fetchone()[0]
            self._purge_now_and_then(db, now)
            return count

        return await self._run(op)

    async def close(self) -> None:
        with self._lock:
            self._db.close()

    async def expire(self, now: float | None = None) -> Expired:
        when = time.time() if now is None else now
        return await self._run(self._purge, when)

    def _purge_now_and_then(self, db: sqlite3.Connection, now: float) -> None:
        # On the write path, in its transaction: every worker process purges now and then,
        # so no task of its own is needed.
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self._purge_every
            self._purge(db, now)

    def _purge(self, db: sqlite3.Connection, now: float) -> Expired:
        cutoff = now - self.retention
        handled = db.execute("DELETE FROM handled WHERE at < ?", (cutoff,)).rowcount
        attempts = db.execute("DELETE FROM attempts WHERE at < ?", (cutoff,)).rowcount
        db.execute("DELETE FROM artifacts WHERE at < ?", (cutoff,))  # kept as results are
        sessions = 0
        if self.session_ttl is not None:
            sessions = db.execute(
                "DELETE FROM sessions WHERE touched_at < ? AND expires_at <= ?",
                (now - self.session_ttl, now),
            ).rowcount
        return Expired(handled, attempts, sessions)

    _seen_ready = False  # the `seen` table exists (made on first use)

    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            if not self._seen_ready:
                db.execute(_SEEN_SCHEMA)
                db.execute(_SEEN_INDEX)
                self._seen_ready = True
            now = time.time()
            db.execute("DELETE FROM seen WHERE expires_at <= ?", (now,))
            row = db.execute("SELECT message_id FROM seen WHERE key=?", (key,)).fetchone()
            if row is not None:
                return bool(row[0] == message_id)
            db.execute(
                "INSERT INTO seen(key, message_id, expires_at) VALUES (?, ?, ?)",
                (key, message_id, now + ttl),
            )
            return True

        return bool(await self._run(op))

    async def put_note(self, kind: str, key: str, value: bytes) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO notes(kind, key, value, at) VALUES (?, ?, ?, ?)",
                (kind, key, value, time.time()),
            )
            db.execute(
                "DELETE FROM notes WHERE kind=? AND key NOT IN"
                " (SELECT key FROM notes WHERE kind=? ORDER BY at DESC LIMIT ?)",
                (kind, kind, NOTES_KEPT),
            )

        await self._run(op)

    async def note(self, kind: str, key: str) -> bytes | None:
        def op(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT value FROM notes WHERE kind=? AND key=?", (kind, key))
            found = row.fetchone()
            return None if found is None else bytes(found[0])

        return await self._run(op)

    async def notes(self, kind: str, limit: int = 50) -> list[Note]:
        def op(db: sqlite3.Connection) -> list[Note]:
            rows = db.execute(
                "SELECT key, value, at FROM notes WHERE kind=? ORDER BY at DESC LIMIT ?",
                (kind, limit),
            )
            return [Note(key, bytes(value), at) for key, value, at in rows]

        return await self._run(op)


# The replay window of signed messages (see SessionStore.first_sighting); entries expire.
_SEEN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen ("
    " key TEXT PRIMARY KEY, message_id TEXT NOT NULL, expires_at REAL NOT NULL)"
)
_SEEN_INDEX = "CREATE INDEX IF NOT EXISTS seen_expiry ON seen(expires_at)"
