"""Session state, handled event ids and the per-session lease, behind one interface.

The lease is the guard of session affinity: only the holder of a session's newest lease token
may write the session, so a worker that stalled past its lease (or lost a partition) can never
overwrite what the new owner wrote. A write stores the new state together with the handled
event's id and result in one atomic step; that id is how a redelivered event is answered from
the stored result instead of being run again.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agentqueue.workers.errors import LeaseLost

HANDLED_KEPT = 1000  # handled ids remembered per session; redeliveries come long before this


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

    @abc.abstractmethod
    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        """Record `key` for `ttl` seconds, atomically; False when it was recorded before with
        another `message_id` (a copy the broker did not redeliver: a replay).

        `key` identifies the signed bytes, `message_id` the broker's message. Every process
        using this store shares the window.
        """


def open_store(url: str) -> SessionStore:
    """A session store for `memory://`, `sqlite:///path` or `redis://host:port/db`."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemorySessionStore(url)
    if scheme == "sqlite":
        from agentqueue.workers.sqlite_store import SQLiteSessionStore

        return SQLiteSessionStore(url)
    if scheme in ("redis", "rediss"):
        from agentqueue.workers.redis_store import RedisSessionStore

        return RedisSessionStore(url)
    raise ValueError(
        f"no session store for URL {url!r}; use memory://, sqlite:///path or redis://host:port/0"
    )


@dataclass
class _Session:
    state: str | None = None
    token: int = 0
    owner: str | None = None
    expires_at: float = 0.0
    handled: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    attempts: dict[str, int] = field(default_factory=dict)


_memory_stores: dict[str, dict[str, _Session]] = {}


class MemorySessionStore(SessionStore):
    """Sessions in this process's memory; stores opened on the same URL share them."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._sessions = _memory_stores.setdefault(urlsplit(url).netloc or "default", {})

    def _get(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session()
        return session

    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        s, now = self._get(session_id), time.time()
        if s.owner not in (None, owner) and s.expires_at > now:
            return None
        s.token += 1
        s.owner, s.expires_at = owner, now + ttl
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
        s.expires_at = time.time() + ttl
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
        s.handled[event_id] = result
        s.attempts.pop(event_id, None)
        while len(s.handled) > HANDLED_KEPT:
            s.handled.popitem(last=False)

    async def count_attempt(self, session_id: str, event_id: str) -> int:
        s = self._get(session_id)
        s.attempts[event_id] = s.attempts.get(event_id, 0) + 1
        return s.attempts[event_id]

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


# Per store URL: signed message key -> (broker message id, expires at), in insertion order.
_memory_seen: dict[str, OrderedDict[str, tuple[str, float]]] = {}
