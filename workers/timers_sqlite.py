"""Timers in the SQLite file of the session store, in a table of their own.

Each step is one `BEGIN IMMEDIATE` transaction, so workers of one machine claim a timer one
at a time; the file is synced on commit (WAL), so a timer written survives any process dying.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import anyio

from agentqueue.workers.sqlite_file import SQLiteFile
from agentqueue.workers.timers import Timer, TimerStore

T = TypeVar("T")

# ready_at: when the timer can be claimed — its due time, or the end of the claim on it.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS timers (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    due REAL NOT NULL,
    payload BLOB NOT NULL,
    token INTEGER NOT NULL DEFAULT 0,
    ready_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX IF NOT EXISTS timers_ready ON timers (namespace, ready_at);
"""


class SQLiteTimerStore(TimerStore):
    """Its own connection to the store's file (WAL), used from worker threads."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self._file = SQLiteFile(url, _SCHEMA)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._file.run(fn)

    def _row(self, row: tuple[str, str, float, bytes, int]) -> Timer:
        key, kind, due, payload, token = row
        return Timer(key, kind, due, bytes(payload), token)

    async def put(self, timer: Timer, *, replace: bool = False) -> bool:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"

        def op(db: sqlite3.Connection) -> bool:
            # A replaced timer keeps a token above the old one, so the old claim is fenced out.
            row = db.execute(
                "SELECT token FROM timers WHERE namespace=? AND key=?", (self.namespace, timer.key)
            ).fetchone()
            cursor = db.execute(
                f"{verb} INTO timers(namespace, key, kind, due, payload, token, ready_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.namespace,
                    timer.key,
                    timer.kind,
                    timer.due,
                    timer.payload,
                    (row[0] + 1) if row else 0,
                    timer.due,
                ),
            )
            return cursor.rowcount > 0

        return await self._run(op)

    async def get(self, key: str) -> Timer | None:
        def op(db: sqlite3.Connection) -> Timer | None:
            row = db.execute(
                "SELECT key, kind, due, payload, token FROM timers WHERE namespace=? AND key=?",
                (self.namespace, key),
            ).fetchone()
            return None if row is None else self._row(row)

        return await self._run(op)

    async def cancel(self, key: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM timers WHERE namespace=? AND key=?", (self.namespace, key)
            )
            return cursor.rowcount > 0

        return await self._run(op)

    async def list(self, prefix: str = "") -> list[Timer]:
        def op(db: sqlite3.Connection) -> list[Timer]:
            rows = db.execute(
                "SELECT key, kind, due, payload, token FROM timers"
                " WHERE namespace=? AND substr(key, 1, ?)=? ORDER BY due, key",
                (self.namespace, len(prefix), prefix),
            ).fetchall()
            return [self._row(row) for row in rows]

        return await self._run(op)

    async def claim(
        self, kinds: Iterable[str], now: float, ttl: float, limit: int = 16
    ) -> builtins.list[Timer]:
        wanted = list(kinds)
        marks = ",".join("?" * len(wanted))

        def op(db: sqlite3.Connection) -> list[Timer]:
            rows = db.execute(
                "SELECT key, kind, due, payload, token FROM timers"
                f" WHERE namespace=? AND ready_at<=? AND kind IN ({marks})"
                " ORDER BY ready_at LIMIT ?",
                (self.namespace, now, *wanted, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                timer = self._row(row)
                token = max(timer.token + 1, int(time.time() * 1_000_000))
                db.execute(
                    "UPDATE timers SET token=?, ready_at=? WHERE namespace=? AND key=?",
                    (token, now + ttl, self.namespace, timer.key),
                )
                claimed.append(Timer(timer.key, timer.kind, timer.due, timer.payload, token))
            return claimed

        return await self._run(op)

    async def complete(self, timer: Timer, due: float | None, payload: bytes) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            where = " WHERE namespace=? AND key=? AND token=?"
            ident = (self.namespace, timer.key, timer.token)
            if due is None:
                cursor = db.execute("DELETE FROM timers" + where, ident)
            else:
                cursor = db.execute(
                    "UPDATE timers SET due=?, payload=?, ready_at=?" + where,
                    (due, payload, due, *ident),
                )
            return cursor.rowcount > 0

        return await self._run(op)

    async def unclaim(self, timer: Timer, ready_at: float | None = None) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE timers SET ready_at=COALESCE(?, due) WHERE namespace=? AND key=?"
                " AND token=?",
                (ready_at, self.namespace, timer.key, timer.token),
            )

        await self._run(op)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._file.close)
