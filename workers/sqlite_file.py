"""One connection to an SQLite file beside the session store's, for a table set of its own.

Used from worker threads, one `BEGIN IMMEDIATE` transaction per step, so the processes of one
machine that share the file take their steps one at a time (model budgets, timers).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import anyio

from agentqueue.workers.sqlite_store import retry_while_locked

T = TypeVar("T")


class SQLiteFile:
    """The file `sqlite:///path` names (WAL mode), with `schema` created if missing."""

    def __init__(self, url: str, schema: str, *, error: type[Exception] = ValueError) -> None:
        path = urlsplit(url).path
        # sqlite:///rel/path -> "rel/path"; sqlite:////abs/path -> "/abs/path"
        self.path = Path(path[1:] if path.startswith("/") else path)
        if not str(self.path):
            raise error(f"sqlite URL {url!r} names no file; use sqlite:///sessions.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        retry_while_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
        retry_while_locked(lambda: self._db.executescript(schema))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in one transaction, on a worker thread."""
        return await anyio.to_thread.run_sync(self.transaction, fn)

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` in one transaction, here; rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
