"""`redis://host:port/db`: sessions in Redis, shared by workers on many machines.

Each operation is one Lua script, so a lease check and the write it guards are atomic, and
lease times use the Redis server's clock, not each worker's.

Retention is Redis's own key expiry: an attempt count is one key per event that expires
`retention` after its last count; a session's handled records (a hash, and a sorted set of
when each was written) lose records older than `retention` at each write to the session and
expire as a whole `retention` after the last one, so a record lives between `retention` and
twice that. With a session idle TTL, the session's hash expires that long after its lease ends.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.commands.core import AsyncScript

from agentqueue.broker.urls import redact_url
from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.redis_replies import as_bytes, as_text
from agentqueue.workers.session_store import (
    DEFAULT_RETENTION,
    HANDLED_KEPT,
    NOTES_KEPT,
    Expired,
    Lease,
    Note,
    SessionStore,
    check_ttls,
)

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"
# Keep the session hash `idle` ms past its lease's end (idle 0: no session TTL, kept).
_KEEP = """
local function keep(key, until_, idle)
  if idle > 0 then redis.call('PEXPIRE', key, math.floor((until_ - now) * 1000) + idle) end
end
"""

# ARGV: owner, ttl, idle_ms. A new session's tokens start at the server's clock in µs (see
# session_store), so tokens stay above those of a session that expired and came back.
_ACQUIRE = (
    _NOW
    + _KEEP
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
if owner and owner ~= ARGV[1] and expires > now then return nil end
if redis.call('HEXISTS', KEYS[1], 'token') == 0 then
  redis.call('HSET', KEYS[1], 'token', string.format('%.0f', t[1] * 1000000 + t[2]))
end
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
local until_ = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires_at', tostring(until_))
keep(KEYS[1], until_, tonumber(ARGV[3]))
return {token, tostring(until_)}
"""
)

_CHECK = (
    _NOW
    + _KEEP
    + """
local token = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
if token ~= tonumber(ARGV[1]) or expires <= now then return {-1, token} end
"""
)

# ARGV: token, ttl, idle_ms
_RENEW = (
    _CHECK
    + """
local until_ = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires_at', tostring(until_))
keep(KEYS[1], until_, tonumber(ARGV[3]))
return {1, tostring(until_)}
"""
)

# KEYS: session hash, handled hash, handled-at sorted set, the event's attempt counter
# ARGV: token, has_state, state, event_id, result, kept, retention_ms, idle_ms
_COMMIT = (
    _CHECK
    + """
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
if redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5]) == 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[4])
end
local function drop(ids)
  for _, id in ipairs(ids) do redis.call('HDEL', KEYS[2], id) end
  if #ids > 0 then redis.call('ZREM', KEYS[3], unpack(ids)) end
end
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if extra > 0 then drop(redis.call('ZRANGE', KEYS[3], 0, extra - 1)) end
local cutoff = now - tonumber(ARGV[7]) / 1000
drop(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%.6f', cutoff)))
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[4])
keep(KEYS[1], expires, tonumber(ARGV[8]))
return {1, token}
"""
)

# KEYS: the event's attempt counter; ARGV: retention_ms
_COUNT = """
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return count
"""

_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'owner'); redis.call('HSET', KEYS[1], 'expires_at', '0')
end
return 1
"""


class RedisSessionStore(SessionStore):
    """Sessions as Redis hashes under `agentqueue:` keys."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "agentqueue",
        retention: float = DEFAULT_RETENTION,
        session_ttl: float | None = None,
    ) -> None:
        self.url = url
        self.session_ttl = check_ttls(retention, session_ttl)
        self.retention = retention
        self._retention_ms = max(1, round(retention * 1000))
        self._idle_ms = round(self.session_ttl * 1000) if self.session_ttl else 0
        if not urlsplit(url).hostname:
            raise ValueError(
                f"redis store URL {redact_url(url)!r} names no host; use redis://host:6379/0"
            )
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._count = self._redis.register_script(_COUNT)

    def _keys(self, session_id: str, event_id: str = "") -> list[str]:
        base = f"{self._prefix}:{{{session_id}}}"  # one hash slot per session on Redis Cluster
        attempt = f"{base}:attempt:{event_id}"
        return [f"{base}:session", f"{base}:handled", f"{base}:handled_at", attempt]

    async def put_artifact(self, key: str, data: bytes) -> None:
        # Kept as long as handled results are: a caller fetches soon after the reply.
        await self._redis.set(f"{self._prefix}:artifact:{key}", data, px=self._retention_ms)

    async def get_artifact(self, key: str) -> bytes | None:
        value = await self._redis.get(f"{self._prefix}:artifact:{key}")
        return None if value is None else as_bytes(value)

    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        result = await self._acquire(
            keys=self._keys(session_id)[:1], args=[owner, ttl, self._idle_ms]
        )
        if result is None:
            return None
        token, until = result
        return Lease(session_id, owner, int(token), float(until))

    def _lost(self, lease: Lease, newest: bytes | int) -> LeaseLost:
        return LeaseLost(
            f"lease {lease.token} on session {lease.session_id!r} is no longer held"
            f" by {lease.owner!r} (newest token {int(newest)}); the write was refused"
        )

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        ok, value = await self._renew(
            keys=self._keys(lease.session_id)[:1], args=[lease.token, ttl, self._idle_ms]
        )
        if int(ok) != 1:
            raise self._lost(lease, value)
        return Lease(lease.session_id, lease.owner, lease.token, float(value))

    async def release(self, lease: Lease) -> None:
        await self._release(keys=self._keys(lease.session_id)[:1], args=[lease.token])

    async def load_state(self, session_id: str) -> str | None:
        value = await self._redis.hget(self._keys(session_id)[0], "state")
        return None if value is None else as_text(value)

    async def handled(self, session_id: str, event_id: str) -> bytes | None:
        value = await self._redis.hget(self._keys(session_id)[1], event_id)
        return None if value is None else as_bytes(value)

    async def commit(self, lease: Lease, state: str | None, event_id: str, result: bytes) -> None:
        ok, value = await self._commit(
            keys=self._keys(lease.session_id, event_id),
            args=[
                lease.token,
                "0" if state is None else "1",
                state or "",
                event_id,
                result,
                HANDLED_KEPT,
                self._retention_ms,
                self._idle_ms,
            ],
        )
        if int(ok) != 1:
            raise self._lost(lease, value)

    async def count_attempt(self, session_id: str, event_id: str) -> int:
        key = self._keys(session_id, event_id)[3]
        return int(await self._count(keys=[key], args=[self._retention_ms]))

    async def close(self) -> None:
        await self._redis.aclose()

    async def expire(self, now: float | None = None) -> Expired:
        """Nothing to do: Redis expires the keys itself (see the module doc)."""
        return Expired()

    _first_sighting: AsyncScript | None = None  # registered on first use

    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        if self._first_sighting is None:
            self._first_sighting = self._redis.register_script(_FIRST_SIGHTING)
        first = await self._first_sighting(
            keys=[f"{self._prefix}:seen:{key}"], args=[message_id, max(1, int(ttl * 1000))]
        )
        return int(first) == 1

    _put_note: AsyncScript | None = None  # registered on first use

    def _note_keys(self, kind: str) -> list[str]:
        base = f"{self._prefix}:{{notes:{kind}}}"  # one hash slot per kind on Redis Cluster
        return [base, f"{base}:at"]

    async def put_note(self, kind: str, key: str, value: bytes) -> None:
        if self._put_note is None:
            self._put_note = self._redis.register_script(_PUT_NOTE)
        await self._put_note(keys=self._note_keys(kind), args=[key, value, NOTES_KEPT])

    async def note(self, kind: str, key: str) -> bytes | None:
        value = await self._redis.hget(self._note_keys(kind)[0], key)
        return None if value is None else as_bytes(value)

    async def notes(self, kind: str, limit: int = 50) -> list[Note]:
        values, times = self._note_keys(kind)
        newest = cast(
            list[tuple[bytes, float]],
            await self._redis.zrevrange(times, 0, limit - 1, withscores=True),
        )
        if not newest:
            return []
        found = await self._redis.hmget(values, [key for key, _ in newest])
        return [
            Note(as_text(key), as_bytes(value), float(at))
            for (key, at), value in zip(newest, found, strict=True)
            if value is not None
        ]


# KEYS: the notes hash, their times; ARGV: key, value, how many to keep. Oldest beyond go.
_PUT_NOTE = (
    _NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
  redis.call('HDEL', KEYS[1], unpack(old))
end
return 1
"""
)

# KEYS: the seen key; ARGV: message id, ttl in ms. Redis expires the key: the window is bounded.
_FIRST_SIGHTING = """
local first = redis.call('GET', KEYS[1])
if not first then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if first == ARGV[1] then return 1 end
return 0
"""
