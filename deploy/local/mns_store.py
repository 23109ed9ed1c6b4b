"""State of the local MNS server in SQLite (WAL): queues, messages, visibility, receipt handles.

Every state change is one transaction, so a restarted server carries on where it stopped: times
are absolute epoch milliseconds, and receipt handles, dequeue counts and invisibility survive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    visibility_timeout INTEGER NOT NULL,
    maximum_message_size INTEGER NOT NULL,
    message_retention_period INTEGER NOT NULL,
    delay_seconds INTEGER NOT NULL,
    polling_wait_seconds INTEGER NOT NULL,
    logging_enabled INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    last_modify_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    body_md5 TEXT NOT NULL,
    priority INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    properties TEXT,
    enqueue_time INTEGER NOT NULL,
    next_visible_time INTEGER NOT NULL,
    first_dequeue_time INTEGER NOT NULL DEFAULT 0,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (queue, priority, enqueue_time, seq);
CREATE INDEX IF NOT EXISTS messages_visibility ON messages (queue, next_visible_time);
"""


@dataclass(frozen=True)
class Property:
    """A user or system message property: name, value and MNS type (STRING, NUMBER, ...)."""

    name: str
    value: str
    type: str


@dataclass(frozen=True)
class QueueAttributes:
    """The settable attributes of a queue, with MNS's defaults."""

    visibility_timeout: int = 30
    maximum_message_size: int = 65536
    message_retention_period: int = 345600
    delay_seconds: int = 0
    polling_wait_seconds: int = 0
    logging_enabled: bool = False


@dataclass(frozen=True)
class QueueInfo:
    """A queue's attributes, times (epoch seconds) and message counts by state."""

    name: str
    attributes: QueueAttributes
    create_time: int
    last_modify_time: int
    active_messages: int = 0
    inactive_messages: int = 0
    delay_messages: int = 0


@dataclass(frozen=True)
class NewMessage:
    """A message as sent; `delay_seconds=None` takes the queue's DelaySeconds."""

    body: str
    delay_seconds: int | None = None
    priority: int = 8
    group_id: str = ""
    user_properties: tuple[Property, ...] = ()
    system_properties: tuple[Property, ...] = ()


@dataclass(frozen=True)
class StoredMessage:
    """A message in a queue; times are epoch milliseconds, `first_dequeue_time` 0 until received."""

    message_id: str
    body: str
    body_md5: str
    priority: int
    enqueue_time: int
    next_visible_time: int
    first_dequeue_time: int
    dequeue_count: int
    receipt_handle: str | None
    group_id: str
    user_properties: tuple[Property, ...]
    system_properties: tuple[Property, ...]


class QueueNotFound(LookupError):
    """No queue has this name."""


class QueueConflict(Exception):
    """A queue of this name exists with other attributes; `.existing` holds them."""

    def __init__(self, name: str, existing: QueueAttributes) -> None:
        super().__init__(f"queue {name!r} exists with other attributes: {existing}")
        self.existing = existing


class HandleNotFound(LookupError):
    """The receipt handle is not the current one of an invisible message in this queue."""


def body_md5(body: str) -> str:
    """MessageBodyMD5 as MNS reports it: upper-case hex MD5 of the body text as it was sent."""
    return hashlib.md5(body.encode("utf-8")).hexdigest().upper()


def _new_handle() -> str:
    # Hex only: the SDK puts receipt handles into the query string without URL-encoding them.
    return "1-" + secrets.token_hex(16)


def _properties_json(message: NewMessage) -> str | None:
    if not message.user_properties and not message.system_properties:
        return None
    return json.dumps(
        {
            "user": [dataclasses.astuple(p) for p in message.user_properties],
            "system": [dataclasses.astuple(p) for p in message.system_properties],
        }
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    properties = json.loads(row["properties"]) if row["properties"] else {}
    return StoredMessage(
        message_id=row["message_id"],
        body=row["body"],
        body_md5=row["body_md5"],
        priority=row["priority"],
        enqueue_time=row["enqueue_time"],
        next_visible_time=row["next_visible_time"],
        first_dequeue_time=row["first_dequeue_time"],
        dequeue_count=row["dequeue_count"],
        receipt_handle=row["receipt_handle"],
        group_id=row["group_id"],
        user_properties=tuple(Property(*p) for p in properties.get("user", ())),
        system_properties=tuple(Property(*p) for p in properties.get("system", ())),
    )


def _attributes(row: sqlite3.Row) -> QueueAttributes:
    return QueueAttributes(
        visibility_timeout=row["visibility_timeout"],
        maximum_message_size=row["maximum_message_size"],
        message_retention_period=row["message_retention_period"],
        delay_seconds=row["delay_seconds"],
        polling_wait_seconds=row["polling_wait_seconds"],
        logging_enabled=bool(row["logging_enabled"]),
    )


_ATTRIBUTE_COLUMNS = tuple(f.name for f in dataclasses.fields(QueueAttributes))


class MNSStore:
    """Queues and messages in one SQLite database; safe to share between threads."""

    def __init__(
        self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL still survives a process crash; only an OS crash may lose the tail.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def now_ms(self) -> int:
        """The store's clock in epoch milliseconds."""
        return int(self._clock() * 1000)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _find_queue(db: sqlite3.Connection, name: str) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM queues WHERE name = ?", (name,)).fetchone()

    @classmethod
    def _queue_row(cls, db: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = cls._find_queue(db, name)
        if row is None:
            raise QueueNotFound(name)
        return row

    @staticmethod
    def _message_at(db: sqlite3.Connection, seq: int) -> StoredMessage:
        return _message(db.execute("SELECT * FROM messages WHERE seq = ?", (seq,)).fetchone())

    def _visible(
        self, db: sqlite3.Connection, name: str, count: int
    ) -> tuple[sqlite3.Row, int, list[sqlite3.Row]]:
        """Queue `name`, the time now, and up to `count` visible messages in delivery order."""
        queue = self._queue_row(db, name)
        now = self.now_ms()
        self._purge_expired(db, queue, now)
        rows = db.execute(
            "SELECT * FROM messages WHERE queue = ? AND next_visible_time <= ?"
            " ORDER BY priority, enqueue_time, seq LIMIT ?",
            (name, now, count),
        ).fetchall()
        return queue, now, rows

    def _purge_expired(self, db: sqlite3.Connection, queue: sqlite3.Row, now: int) -> None:
        # MessageRetentionPeriod: a message is dropped that long after it was sent, in any state.
        cutoff = now - queue["message_retention_period"] * 1000
        db.execute(
            "DELETE FROM messages WHERE queue = ? AND enqueue_time <= ?", (queue["name"], cutoff)
        )

    # ------------------------------------------------------------------ queues

    def create_queue(self, name: str, values: dict[str, int | bool]) -> bool:
        """Create queue `name`; False if it already exists with the same attributes."""
        # parse_queue_meta keys `values` by QueueAttributes' field names with each field's type;
        # a dict cannot say so per key.
        wanted = dataclasses.replace(QueueAttributes(), **values)  # type: ignore[arg-type]
        with self._transaction() as db:
            row = self._find_queue(db, name)
            if row is not None:
                existing = _attributes(row)
                if existing != wanted:
                    raise QueueConflict(name, existing)
                return False
            now = int(self._clock())
            db.execute(
                f"INSERT INTO queues (name, {', '.join(_ATTRIBUTE_COLUMNS)}, create_time,"
                f" last_modify_time) VALUES (?, {', '.join('?' * len(_ATTRIBUTE_COLUMNS))}, ?, ?)",
                (name, *dataclasses.astuple(wanted), now, now),
            )
            return True

    def set_queue_attributes(self, name: str, values: dict[str, int | bool]) -> None:
        """Change the given attributes of queue `name`, leaving the others."""
        with self._transaction() as db:
            self._queue_row(db, name)
            if not values:
                return
            assignments = ", ".join(f"{column} = ?" for column in values)
            db.execute(
                f"UPDATE queues SET {assignments}, last_modify_time = ? WHERE name = ?",
                (*values.values(), int(self._clock()), name),
            )

    def queue_attributes(self, name: str) -> QueueAttributes:
        """The attributes of queue `name`."""
        with self._lock:
            return _attributes(self._queue_row(self._db, name))

    def get_queue(self, name: str) -> QueueInfo:
        """Queue `name` with its message counts."""
        with self._transaction() as db:
            return self._info(db, self._queue_row(db, name), self.now_ms())

    def _info(self, db: sqlite3.Connection, row: sqlite3.Row, now: int) -> QueueInfo:
        self._purge_expired(db, row, now)
        active, inactive, delayed = db.execute(
            "SELECT"
            " coalesce(sum(next_visible_time <= :now), 0),"
            " coalesce(sum(next_visible_time > :now AND dequeue_count > 0), 0),"
            " coalesce(sum(next_visible_time > :now AND dequeue_count = 0), 0)"
            " FROM messages WHERE queue = :queue",
            {"now": now, "queue": row["name"]},
        ).fetchone()
        return QueueInfo(
            name=row["name"],
            attributes=_attributes(row),
            create_time=row["create_time"],
            last_modify_time=row["last_modify_time"],
            active_messages=active,
            inactive_messages=inactive,
            delay_messages=delayed,
        )

    def delete_queue(self, name: str) -> bool:
        """Delete queue `name` and its messages; False if there was no such queue."""
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE queue = ?", (name,))
            return db.execute("DELETE FROM queues WHERE name = ?", (name,)).rowcount > 0

    def list_queues(
        self, prefix: str = "", marker: str = "", limit: int = 1000
    ) -> tuple[list[QueueInfo], str | None]:
        """Queues named `prefix`... after `marker` by name, and the marker of the next page."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM queues WHERE name > ? AND substr(name, 1, ?) = ?"
                " ORDER BY name LIMIT ?",
                (marker, len(prefix), prefix, limit + 1),
            ).fetchall()
            now = self.now_ms()
            queues = [self._info(db, row, now) for row in rows[:limit]]
        return queues, (queues[-1].name if len(rows) > limit else None)

    # ------------------------------------------------------------------ messages

    def send(self, name: str, messages: list[NewMessage]) -> list[StoredMessage]:
        """Append `messages` to queue `name`; a delayed one gets a receipt handle at once."""
        with self._transaction() as db:
            queue = self._queue_row(db, name)
            now = self.now_ms()
            stored = []
            for message in messages:
                delay = (
                    queue["delay_seconds"]
                    if message.delay_seconds is None
                    else message.delay_seconds
                )
                values = {
                    "queue": name,
                    "message_id": uuid.uuid4().hex.upper(),
                    "body": message.body,
                    "body_md5": body_md5(message.body),
                    "priority": message.priority,
                    "group_id": message.group_id,
                    "properties": _properties_json(message),
                    "enqueue_time": now,
                    "next_visible_time": now + delay * 1000,
                    "receipt_handle": _new_handle() if delay > 0 else None,
                }
                db.execute(
                    f"INSERT INTO messages ({', '.join(values)})"
                    f" VALUES ({', '.join(':' + column for column in values)})",
                    values,
                )
                row = db.execute(
                    "SELECT * FROM messages WHERE message_id = ?", (values["message_id"],)
                ).fetchone()
                stored.append(_message(row))
            return stored

    def receive(self, name: str, count: int) -> list[StoredMessage]:
        """Take up to `count` visible messages, hiding each for the queue's visibility timeout."""
        with self._transaction() as db:
            queue, now, rows = self._visible(db, name, count)
            taken = []
            for row in rows:
                db.execute(
                    "UPDATE messages SET receipt_handle = ?, next_visible_time = ?,"
                    " dequeue_count = dequeue_count + 1,"
                    " first_dequeue_time = CASE first_dequeue_time WHEN 0 THEN ?"
                    " ELSE first_dequeue_time END WHERE seq = ?",
                    (_new_handle(), now + queue["visibility_timeout"] * 1000, now, row["seq"]),
                )
                taken.append(self._message_at(db, row["seq"]))
            return taken

    def peek(self, name: str, count: int) -> list[StoredMessage]:
        """Up to `count` visible messages in delivery order, left as they are."""
        with self._transaction() as db:
            _queue, _now, rows = self._visible(db, name, count)
            return [_message(row) for row in rows]

    def _in_flight(self, db: sqlite3.Connection, name: str, handle: str, now: int) -> int:
        self._queue_row(db, name)
        row = db.execute(
            "SELECT seq FROM messages WHERE queue = ? AND receipt_handle = ?"
            " AND next_visible_time > ?",
            (name, handle, now),
        ).fetchone()
        if row is None:
            raise HandleNotFound(handle)
        return row["seq"]

    def delete(self, name: str, handle: str) -> None:
        """Delete the message `handle` currently names; HandleNotFound if it is stale."""
        with self._transaction() as db:
            seq = self._in_flight(db, name, handle, self.now_ms())
            db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def change_visibility(self, name: str, handle: str, seconds: int) -> StoredMessage:
        """Hide the message `handle` names for `seconds` from now, under a new receipt handle."""
        with self._transaction() as db:
            now = self.now_ms()
            seq = self._in_flight(db, name, handle, now)
            db.execute(
                "UPDATE messages SET receipt_handle = ?, next_visible_time = ? WHERE seq = ?",
                (_new_handle(), now + seconds * 1000, seq),
            )
            return self._message_at(db, seq)

    def next_visible_at(self, name: str) -> int | None:
        """When the next hidden message of queue `name` becomes visible (epoch ms), if any."""
        with self._lock:
            (value,) = self._db.execute(
                "SELECT min(next_visible_time) FROM messages WHERE queue = ?"
                " AND next_visible_time > ?",
                (name, self.now_ms()),
            ).fetchone()
            return value
