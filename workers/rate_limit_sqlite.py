"""Model rate limits and usage in the SQLite file of the session store, in tables of their own."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agentqueue.workers.errors import ModelConfigError
from agentqueue.workers.rate_limit import (
    USAGE_KEPT,
    LimitBackend,
    ModelUsage,
    RateLimit,
    seconds_until_room,
)
from agentqueue.workers.sqlite_file import SQLiteFile

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_grants (
    budget TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    at REAL NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (budget, grant_id)
);
CREATE INDEX IF NOT EXISTS model_grants_at ON model_grants (budget, at);
CREATE TABLE IF NOT EXISTS model_pauses (
    budget TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_usage (
    namespace TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    second INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (namespace, provider, model, second)
);
"""


class SQLiteLimitBackend(LimitBackend):
    """Its own connection to the store's file (WAL), used from worker threads; one transaction
    per step, so workers of one machine share the budget exactly."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._file = SQLiteFile(url, _SCHEMA, error=ModelConfigError)
        self.path = self._file.path
        self._pruned = 0.0

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._file.run(fn)

    async def try_acquire(self, key: str, grant_id: str, tokens: int, limit: RateLimit) -> float:
        def op(db: sqlite3.Connection) -> float:
            now = time.time()
            db.execute(
                "DELETE FROM model_grants WHERE budget=? AND at <= ?", (key, now - limit.span)
            )
            row = db.execute("SELECT until FROM model_pauses WHERE budget=?", (key,)).fetchone()
            grants = db.execute(
                "SELECT at, tokens FROM model_grants WHERE budget=? ORDER BY at", (key,)
            ).fetchall()
            charged = sum(spent for _, spent in grants)
            wait = seconds_until_room(grants, charged, row[0] if row else 0.0, now, tokens, limit)
            if wait <= 0:
                db.execute(
                    "INSERT INTO model_grants(budget, grant_id, at, tokens) VALUES (?, ?, ?, ?)",
                    (key, grant_id, now, tokens),
                )
            return wait

        return await self._run(op)

    async def settle(self, key: str, grant_id: str, tokens: int) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE model_grants SET tokens=? WHERE budget=? AND grant_id=?",
                (tokens, key, grant_id),
            )

        await self._run(op)

    async def pause(self, key: str, seconds: float) -> None:
        def op(db: sqlite3.Connection) -> None:
            until = time.time() + seconds
            db.execute(
                "INSERT INTO model_pauses(budget, until) VALUES (?, ?)"
                " ON CONFLICT(budget) DO UPDATE SET until = MAX(until, excluded.until)",
                (key, until),
            )

        await self._run(op)

    async def record(
        self, namespace: str, provider: str, model: str, prompt: int, completion: int
    ) -> None:
        def op(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "INSERT INTO model_usage VALUES (?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT(namespace, provider, model, second) DO UPDATE SET"
                " calls = calls + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens",
                (namespace, provider, model, int(now), prompt, completion),
            )
            if now - self._pruned > 60:
                self._pruned = now
                db.execute("DELETE FROM model_usage WHERE second < ?", (int(now - USAGE_KEPT),))

        await self._run(op)

    async def usage(self, namespace: str, window: float) -> list[ModelUsage]:
        def op(db: sqlite3.Connection) -> list[Any]:
            since = time.time() - window
            return db.execute(
                "SELECT provider, model, SUM(calls), SUM(prompt_tokens), SUM(completion_tokens)"
                " FROM model_usage WHERE namespace=? AND second + 1 > ?"
                " GROUP BY provider, model",
                (namespace, since),
            ).fetchall()

        rows = await self._run(op)
        return sorted((ModelUsage(*row) for row in rows), key=lambda u: -u.total_tokens)

    async def close(self) -> None:
        self._file.close()
