"""Session state, handled event ids and the per-session lease, behind one interface.

The lease is the guard of session affinity: only the holder of a session's newest lease token
may write the session, so a worker that stalled past its lease (or lost a partition) can never
overwrite what the new owner wrote. A write stores the new state together with the handled
event's id and result in one atomic step; that id is how a redelivered event is answered from
the stored result instead of being run again.

Nothing is kept for ever. Handled-event records and attempt counts expire `retention` seconds
(default 7 days, `DEFAULT_RETENTION`) after they were written: a redelivery comes within
minutes (hours at most, MNS's longest visibility timeout being 12 h), long before. Session
state expires only when a session idle TTL is set (`session_ttl`, off by default), after the
session was neither leased nor written for that long, and never while a lease on it is live.
Lease tokens start from the store's clock in microseconds, so a session that expired and came
back gets tokens above every token handed out before: a worker that stalled through the expiry
still cannot write.
"""

from __future__ import annotations

import abc
import importlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agentqueue.broker.urls import redact_url
from agentqueue.workers.errors import LeaseLost

HANDLED_KEPT = 1000  # handled ids remembered per session; redeliveries come long before this
DEFAULT_RETENTION = 7 * 24 * 3600.0  # seconds handled records and attempt counts are kept
PURGE_EVERY = 60.0  # stores that purge on writes do so at most this often (seconds)
NOTES_KEPT = 200  # notes kept per kind (sessions shown, batches shown)


@dataclass(frozen=True, slots=True)
class Expired:
    """What one expiry pass deleted."""

    handled: int = 0
    attempts: int = 0
    sessions: int = 0


def check_ttls(retention: float, session_ttl: float | None) -> float | None:
    """Refuse a TTL that is not a positive number of seconds; returns session_ttl (0 -> None)."""
    if not retention > 0 or retention == float("inf"):
        raise ValueError(
            f"store retention must be a positive number of seconds, got {retention!r}"
            f" (default {DEFAULT_RETENTION:.0f}, 7 days)"
        )
    if session_ttl is not None and (session_ttl < 0 or session_ttl != session_ttl):
        raise ValueError(
            f"session idle TTL must be a positive number of seconds or 0 (off), got {session_ttl!r}"
        )
    return session_ttl or None


def first_token(now: float) -> int:
    """The token a new session record starts from: microseconds of `now` (see the module doc)."""
    return int(now * 1_000_000)


@dataclass(frozen=True, slots=True)
class Note:
    """A small record kept for operators: its key, value and when it was written."""

    key: str
    value: bytes
    at: float


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to write one session, until `expires_at` (unix seconds), fenced by `token`."""

    session_id: str
    owner: str
    token: int
    expires_at: float


class SessionStore(abc.ABC):
    """Where sessions live between events (and between workers)."""

    url: str

    @abc.abstractmethod
    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        """A new lease with a higher token, or None while another owner's lease is live."""

    @abc.abstractmethod
    async def renew(self, lease: Lease, ttl: float) -> Lease:
        """Extend a lease still held; raises `LeaseLost` if it was taken over or expired."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give the lease up early (no-op when no longer held)."""

    @abc.abstractmethod
    async def load_state(self, session_id: str) -> str | None:
        """The session's state JSON, or None for a new session."""

    @abc.abstractmethod
    async def handled(self, session_id: str, event_id: str) -> bytes | None:
        """The stored result of an event already handled in this session, else None."""

    @abc.abstractmethod
    async def commit(self, lease: Lease, state: str | None, event_id: str, result: bytes) -> None:
        """Save state (None keeps it) and the handled id + result at once; fenced by the lease."""

    @abc.abstractmethod
    async def count_attempt(self, session_id: str, event_id: str) -> int:
        """Record one more attempt at an event and return the count (poison detection)."""

    async def close(self) -> None:  # noqa: B027 - most stores have nothing to close
        """Release connections."""

    retention: float = DEFAULT_RETENTION
    session_ttl: float | None = None

    @abc.abstractmethod
    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        """Record `key` for `ttl` seconds, atomically; False when it was recorded before with
        another `message_id` (a copy the broker did not redeliver: a replay).

        `key` identifies the signed bytes, `message_id` the broker's message. Every process
        using this store shares the window.
        """

    async def expire(self, now: float | None = None) -> Expired:
        """Delete what is past its TTL as of `now` (unix seconds; default: now)."""
        return Expired()

    # Notes: small records for operators (a session's last turns, a batch's progress), by kind
    # and key; only the NOTES_KEPT most recently written keys of a kind are kept.

    @abc.abstractmethod
    async def put_note(self, kind: str, key: str, value: bytes) -> None:
        """Keep `value` as note `key` of `kind`, replacing the one before."""

    @abc.abstractmethod
    async def note(self, kind: str, key: str) -> bytes | None:
        """Note `key` of `kind`, or None."""

    @abc.abstractmethod
    async def notes(self, kind: str, limit: int = 50) -> list[Note]:
        """The most recently written notes of `kind`, newest first."""

    async def put_artifact(self, key: str, data: bytes) -> None:
        """Keep `data` (a large tool output, e.g. a screenshot) under `key`."""
        raise NotImplementedError(
            f"{type(self).__name__} keeps no artifacts: use a memory://, sqlite:// or redis://"
            " store for tools that return large images"
        )

    async def get_artifact(self, key: str) -> bytes | None:
        """The artifact stored under `key`, or None."""
        raise NotImplementedError(
            f"{type(self).__name__} keeps no artifacts: use a memory://, sqlite:// or redis://"
            " store for tools that return large images"
        )


# Session store implementations by URL scheme, as "module:class", imported only when used.
STORES: dict[str, str] = {
    "memory": "agentqueue.workers.session_store:MemorySessionStore",
    "sqlite": "agentqueue.workers.sqlite_store:SQLiteSessionStore",
    "redis": "agentqueue.workers.redis_store:RedisSessionStore",
    "rediss": "agentqueue.workers.redis_store:RedisSessionStore",
}


ARTIFACT_REF = "artifact:"  # Image.ref is this prefix and the artifact's key in the store


def artifact_key(ref: str) -> str:
    """The store key an `Image.ref` names; anything else is refused."""
    if not ref.startswith(ARTIFACT_REF) or len(ref) == len(ARTIFACT_REF):
        raise ValueError(
            f"{ref!r} is not an artifact reference: pass the `ref` of an image a tool returned"
            f" (it starts with {ARTIFACT_REF!r})"
        )
    return ref[len(ARTIFACT_REF) :]


def open_store(
    url: str, *, retention: float = DEFAULT_RETENTION, session_ttl: float | None = None
) -> SessionStore:
    """A session store for `memory://`, `sqlite:///path` or `redis://host:port/db`.

    `retention`: seconds handled-event records and attempt counts are kept; `session_ttl`:
    seconds of idleness after which a session's state is deleted (None or 0: kept for ever).
    """
    scheme = urlsplit(url).scheme
    target = STORES.get(scheme)
    if target is None:
        raise ValueError(
            f"no session store for URL {redact_url(url)!r};"
            " use memory://, sqlite:///path or redis://host:port/0"
        )
    module, _, name = target.partition(":")
    store_class: Callable[..., SessionStore] = getattr(importlib.import_module(module), name)
    return store_class(url, retention=retention, session_ttl=session_ttl)


@dataclass
class _Session:
    state: str | None = None
    token: int = 0
    owner: str | None = None
    expires_at: float = 0.0
    handled: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    attempts: dict[str, int] = field(default_factory=dict)
    handled_at: dict[str, float] = field(default_factory=dict)
    attempted_at: dict[str, float] = field(default_factory=dict)
    touched_at: float = 0.0


_memory_stores: dict[str, dict[str, _Session]] = {}
_memory_artifacts: dict[str, dict[str, bytes]] = {}


class MemorySessionStore(SessionStore):
    """Sessions in this process's memory; stores opened on the same URL share them."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        retention: float = DEFAULT_RETENTION,
        session_ttl: float | None = None,
    ) -> None:
        self.url = url
        self.session_ttl = check_ttls(retention, session_ttl)
        self.retention = retention
        self._sessions = _memory_stores.setdefault(urlsplit(url).netloc or "default", {})
        self._artifacts = _memory_artifacts.setdefault(urlsplit(url).netloc or "default", {})
        self._next_purge = time.monotonic() + min(PURGE_EVERY, retention / 2)

    def _get(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(token=first_token(time.time()))
        return session

    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        s, now = self._get(session_id), time.time()
        if s.owner not in (None, owner) and s.expires_at > now:
            return None
        s.token += 1
        s.owner, s.expires_at, s.touched_at = owner, now + ttl, now
        return Lease(session_id, owner, s.token, s.expires_at)

    def _check(self, lease: Lease) -> _Session:
        s = self._get(lease.session_id)
        if s.token != lease.token or s.expires_at <= time.time():
            raise LeaseLost(
                f"lease {lease.token} on session {lease.session_id!r} is no longer held"
                f" by {lease.owner!r} (newest token {s.token}); the write was refused"
            )
        return s

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        s = self._check(lease)
        s.touched_at = time.time()
        s.expires_at = s.touched_at + ttl
        return Lease(lease.session_id, lease.owner, lease.token, s.expires_at)

    async def release(self, lease: Lease) -> None:
        s = self._get(lease.session_id)
        if s.token == lease.token:
            s.owner, s.expires_at = None, 0.0

    async def load_state(self, session_id: str) -> str | None:
        return self._get(session_id).state

    async def handled(self, session_id: str, event_id: str) -> bytes | None:
        return self._get(session_id).handled.get(event_id)

    async def commit(self, lease: Lease, state: str | None, event_id: str, result: bytes) -> None:
        s = self._check(lease)
        if state is not None:
            s.state = state
        s.touched_at = time.time()
        s.handled[event_id] = result
        s.handled_at[event_id] = s.touched_at
        s.attempts.pop(event_id, None)
        s.attempted_at.pop(event_id, None)
        while len(s.handled) > HANDLED_KEPT:
            s.handled_at.pop(s.handled.popitem(last=False)[0], None)
        await self._purge_now_and_then()

    async def put_artifact(self, key: str, data: bytes) -> None:
        self._artifacts[key] = data

    async def get_artifact(self, key: str) -> bytes | None:
        return self._artifacts.get(key)

    async def count_attempt(self, session_id: str, event_id: str) -> int:
        s = self._get(session_id)
        s.attempts[event_id] = s.attempts.get(event_id, 0) + 1
        s.attempted_at[event_id] = time.time()
        count = s.attempts[event_id]
        await self._purge_now_and_then()
        return count

    async def _purge_now_and_then(self) -> None:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + min(PURGE_EVERY, self.retention / 2)
            await self.expire()

    async def expire(self, now: float | None = None) -> Expired:
        now = time.time() if now is None else now
        cutoff = now - self.retention
        handled = attempts = sessions = 0
        for session_id, s in list(self._sessions.items()):
            for event_id in [e for e, at in s.handled_at.items() if at < cutoff]:
                del s.handled[event_id], s.handled_at[event_id]
                handled += 1
            for event_id in [e for e, at in s.attempted_at.items() if at < cutoff]:
                del s.attempts[event_id], s.attempted_at[event_id]
                attempts += 1
            if s.expires_at > now:
                continue  # leased: in use
            idle = self.session_ttl is not None and s.touched_at < now - self.session_ttl
            if idle and s.state is not None:
                s.state = None
                sessions += 1
            if s.state is None and not s.handled and not s.attempts:
                del self._sessions[session_id]  # nothing left but a token (see first_token)
        return Expired(handled, attempts, sessions)

    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        seen = _memory_seen.setdefault(urlsplit(self.url).netloc or "default", OrderedDict())
        now = time.time()
        # Oldest first: what expired is dropped from the front, so the window stays bounded.
        while seen and next(iter(seen.values()))[1] <= now:
            seen.popitem(last=False)
        first = seen.get(key)
        if first is not None and first[1] > now:
            return first[0] == message_id
        seen[key] = (message_id, now + ttl)
        return True

    async def put_note(self, kind: str, key: str, value: bytes) -> None:
        kept = _memory_notes.setdefault((self.url, kind), OrderedDict())
        kept.pop(key, None)
        kept[key] = Note(key, value, time.time())
        while len(kept) > NOTES_KEPT:
            kept.popitem(last=False)

    async def note(self, kind: str, key: str) -> bytes | None:
        kept = _memory_notes.get((self.url, kind))
        found = None if kept is None else kept.get(key)
        return None if found is None else found.value

    async def notes(self, kind: str, limit: int = 50) -> list[Note]:
        kept = _memory_notes.get((self.url, kind), OrderedDict())
        return list(reversed(kept.values()))[:limit]


# Per store URL and kind: notes, oldest first.
_memory_notes: dict[tuple[str, str], OrderedDict[str, Note]] = {}
# Per store URL: signed message key -> (broker message id, expires at), in insertion order.
_memory_seen: dict[str, OrderedDict[str, tuple[str, float]]] = {}
