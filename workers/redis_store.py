"""`redis://host:port/db`: sessions in Redis, shared by workers on many machines.

Each operation is one Lua script, so a lease check and the write it guards are atomic, and
lease times use the Redis server's clock, not each worker's.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.commands.core import AsyncScript

from agentqueue.workers.errors import LeaseLost
from agentqueue.workers.session_store import HANDLED_KEPT, Lease, SessionStore

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

_ACQUIRE = (
    _NOW
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
if owner and owner ~= ARGV[1] and expires > now then return nil end
local token = redis.call('HINCRBY', KEYS[1], 'token', 1)
local until_ = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires_at', tostring(until_))
return {token, tostring(until_)}
"""
)

_CHECK = (
    _NOW
    + """
local token = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
if token ~= tonumber(ARGV[1]) or expires <= now then return {-1, token} end
"""
)

_RENEW = (
    _CHECK
    + """
local until_ = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'expires_at', tostring(until_))
return {1, tostring(until_)}
"""
)

# KEYS: session hash, handled hash, handled order list, attempts hash
# ARGV: token, has_state, state, event_id, result, kept
_COMMIT = (
    _CHECK
    + """
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'state', ARGV[3]) end
if redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5]) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  while redis.call('LLEN', KEYS[3]) > tonumber(ARGV[6]) do
    redis.call('HDEL', KEYS[2], redis.call('LPOP', KEYS[3]))
  end
end
redis.call('HDEL', KEYS[4], ARGV[4])
return {1, token}
"""
)

_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'owner'); redis.call('HSET', KEYS[1], 'expires_at', '0')
end
return 1
"""


class RedisSessionStore(SessionStore):
    """Sessions as Redis hashes under `agentqueue:` keys."""

    def __init__(self, url: str, *, prefix: str = "agentqueue") -> None:
        self.url = url
        if not urlsplit(url).hostname:
            raise ValueError(f"redis store URL {url!r} names no host; use redis://host:6379/0")
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)

    def _keys(self, session_id: str) -> list[str]:
        base = f"{self._prefix}:{{{session_id}}}"  # one hash slot per session on Redis Cluster
        return [f"{base}:session", f"{base}:handled", f"{base}:order", f"{base}:attempts"]

    async def acquire(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        result = await self._acquire(keys=self._keys(session_id)[:1], args=[owner, ttl])
        if result is None:
            return None
        token, until = result
        return Lease(session_id, owner, int(token), float(until))

    def _lost(self, lease: Lease, newest: object) -> LeaseLost:
        return LeaseLost(
            f"lease {lease.token} on session {lease.session_id!r} is no longer held"
            f" by {lease.owner!r} (newest token {int(newest)}); the write was refused"  # type: ignore[call-overload]
        )

    async def renew(self, lease: Lease, ttl: float) -> Lease:
        ok, value = await self._renew(
            keys=self._keys(lease.session_id)[:1], args=[lease.token, ttl]
        )
        if int(ok) != 1:
            raise self._lost(lease, value)
        return Lease(lease.session_id, lease.owner, lease.token, float(value))

    async def release(self, lease: Lease) -> None:
        await self._release(keys=self._keys(lease.session_id)[:1], args=[lease.token])

    async def load_state(self, session_id: str) -> str | None:
        value = await self._redis.hget(self._keys(session_id)[0], "state")
        return None if value is None else value.decode()

    async def handled(self, session_id: str, event_id: str) -> bytes | None:
        return await self._redis.hget(self._keys(session_id)[1], event_id)

    async def commit(self, lease: Lease, state: str | None, event_id: str, result: bytes) -> None:
        ok, value = await self._commit(
            keys=self._keys(lease.session_id),
            args=[
                lease.token,
                "0" if state is None else "1",
                state or "",
                event_id,
                result,
                HANDLED_KEPT,
            ],
        )
        if int(ok) != 1:
            raise self._lost(lease, value)

    async def count_attempt(self, session_id: str, event_id: str) -> int:
        return int(await self._redis.hincrby(self._keys(session_id)[3], event_id, 1))

    async def close(self) -> None:
        await self._redis.aclose()

    _first_sighting: AsyncScript | None = None  # registered on first use

    async def first_sighting(self, key: str, message_id: str, ttl: float) -> bool:
        if self._first_sighting is None:
            self._first_sighting = self._redis.register_script(_FIRST_SIGHTING)
        first = await self._first_sighting(
            keys=[f"{self._prefix}:seen:{key}"], args=[message_id, max(1, int(ttl * 1000))]
        )
        return int(first) == 1


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
