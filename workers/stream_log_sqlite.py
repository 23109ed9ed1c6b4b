"""Stream logs in the session store's SQLite file (a table of its own), for one machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio

from agentqueue.workers.session_store import PURGE_EVERY
from agentqueue.workers.sqlite_store import open_database
from agentqueue.workers.stream_log import (
    DEFAULT_STREAM_EVENTS,
    DEFAULT_STREAM_RETENTION,
    Kept,
    StreamLog,
)

# seq 0 is the row that opens a request's log, so a started request with no events is known.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream_events (
    request_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    data BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (request_id, seq)
);
CREATE INDEX IF NOT EXISTS stream_events_at ON stream_events(at);
"""

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class SQLiteStreamLog(StreamLog):
    """The `stream_events` table of the store's file, in WAL mode; readers poll it."""

    def __init__(
        self,
        url: str,
        *,
        max_events: int = DEFAULT_STREAM_EVENTS,
        retention: float = DEFAULT_STREAM_RETENTION,
    ) -> None:
        self.url, self.max_events, self.retention = url, max_events, retention
        self.path, self._db = open_database(url, _SCHEMA)
        self._lock = threading.Lock()
        self._next_purge = 0.0

    async def _run(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db, *args)

        return await anyio.to_thread.run_sync(locked)

    def _live(self, db: sqlite3.Connection, request_id: str) -> bool:
        """Whether the request has a log written within the retention."""
        row = db.execute(
            "SELECT MAX(at) FROM stream_events WHERE request_id=?", (request_id,)
        ).fetchone()
        return row[0] is not None and row[0] >= time.time() - self.retention

    async def open(self, request_id: str) -> tuple[int, int]:
        def op(db: sqlite3.Connection) -> tuple[int, int]:
            now = time.time()
            if time.monotonic() >= self._next_purge:
                self._next_purge = time.monotonic() + min(PURGE_EVERY, self.retention / 2)
                # Whole logs whose newest event is past the retention.
                db.execute(
                    "DELETE FROM stream_events WHERE request_id IN (SELECT request_id FROM"
                    " stream_events GROUP BY request_id HAVING MAX(at) < ?)",
                    (now - self.retention,),
                )
            if not self._live(db, request_id):
                db.execute("DELETE FROM stream_events WHERE request_id=?", (request_id,))
            db.execute(
                "INSERT OR IGNORE INTO stream_events VALUES (?, 0, 0, x'', ?)", (request_id, now)
            )
            row = db.execute(
                "SELECT seq, attempt FROM stream_events WHERE request_id=?"
                " ORDER BY seq DESC LIMIT 1",
                (request_id,),
            ).fetchone()
            return int(row[0]), int(row[1])

        return await self._run(op)

    async def append(self, request_id: str, kept: Kept) -> None:
        await self.append_many(request_id, [kept])

    async def append_many(self, request_id: str, kept: list[Kept]) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                db.executemany(
                    "INSERT OR IGNORE INTO stream_events VALUES (?, ?, ?, ?, ?)",
                    [(request_id, k.seq, k.attempt, k.data, now) for k in kept],
                )
                db.execute(
                    "DELETE FROM stream_events WHERE request_id=? AND seq > 0 AND seq <= ?",
                    (request_id, kept[-1].seq - self.max_events),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._run(op)

    async def read(self, request_id: str, after: int) -> list[Kept] | None:
        def op(db: sqlite3.Connection) -> list[Kept] | None:
            if not self._live(db, request_id):
                return None
            rows = db.execute(
                "SELECT seq, attempt, data FROM stream_events WHERE request_id=? AND seq > ?"
                " ORDER BY seq",
                (request_id, after),
            ).fetchall()
            return [Kept(int(s), int(a), bytes(d)) for s, a, d in rows]

        return await self._run(op)

    async def last(self, request_id: str) -> Kept | None:
        def op(db: sqlite3.Connection) -> Kept | None:
            if not self._live(db, request_id):
                return None
            row = db.execute(
                "SELECT seq, attempt, data FROM stream_events WHERE request_id=? AND seq > 0"
                " ORDER BY seq DESC LIMIT 1",
                (request_id,),
            ).fetchone()
            return None if row is None else Kept(int(row[0]), int(row[1]), bytes(row[2]))

        return await self._run(op)

    async def close(self) -> None:
        self._db.close()
