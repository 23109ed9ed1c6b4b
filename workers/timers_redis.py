"""Timers in the session store's Redis, one hash per timer and one sorted set of when each can
be claimed; each step is one Lua script, so a claim is atomic across every worker.

All keys of a namespace share one hash tag, so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.typing import EncodableT

from agentqueue.workers.redis_replies import as_bytes, as_text
from agentqueue.workers.timers import Timer, TimerStore

# KEYS: timer hash, ready set; ARGV: key, kind, due, payload, replace
_PUT = """
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[5] ~= '1' then return 0 end
local token = 0
if exists then token = tonumber(redis.call('HGET', KEYS[1], 'token')) + 1 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'due', ARGV[3], 'payload', ARGV[4],
  'token', string.format('%.0f', token))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: ready set; ARGV: prefix of timer hashes, now, ttl, limit, kinds…
_CLAIM = """
local t = redis.call('TIME')
local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = tonumber(ARGV[2])
local kinds = {}
for i = 5, #ARGV do kinds[ARGV[i]] = true end
local out = {}
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 256)
for _, key in ipairs(keys) do
  if #out >= tonumber(ARGV[4]) * 5 then break end
  local h = ARGV[1] .. key
  local kind = redis.call('HGET', h, 'kind')
  if not kind then
    redis.call('ZREM', KEYS[1], key)
  elseif kinds[kind] then
    local token = math.max(tonumber(redis.call('HGET', h, 'token')) + 1, floor)
    redis.call('HSET', h, 'token', string.format('%.0f', token))
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), key)
    local f = redis.call('HMGET', h, 'due', 'payload')
    table.insert(out, key); table.insert(out, kind); table.insert(out, f[1])
    table.insert(out, f[2]); table.insert(out, string.format('%.0f', token))
  end
end
return out
"""

# KEYS: timer hash, ready set; ARGV: key, token, due ('' deletes), payload
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'due', ARGV[3], 'payload', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
"""

# KEYS: timer hash, ready set; ARGV: key, token, ready at ('' = its due time)
_UNCLAIM = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then return 0 end
local ready = ARGV[3]
if ready == '' then ready = redis.call('HGET', KEYS[1], 'due') end
redis.call('ZADD', KEYS[2], ready, ARGV[1])
return 1
"""

_CANCEL = """
local gone = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return gone
"""


class RedisTimerStore(TimerStore):
    """Timers under `agentqueue:{timers:<namespace>}:` keys."""

    def __init__(self, url: str, namespace: str, *, prefix: str = "agentqueue") -> None:
        self.url = url
        if not urlsplit(url).hostname:
            raise ValueError(f"redis URL {url!r} names no host; use redis://host:6379/0")
        self._redis = redis.Redis.from_url(url)
        base = f"{prefix}:{{timers:{namespace}}}"
        self._ready = f"{base}:ready"
        self._hash_prefix = f"{base}:timer:"
        self._put = self._redis.register_script(_PUT)
        self._claim = self._redis.register_script(_CLAIM)
        self._complete = self._redis.register_script(_COMPLETE)
        self._unclaim = self._redis.register_script(_UNCLAIM)
        self._cancel = self._redis.register_script(_CANCEL)

    def _keys(self, key: str) -> list[str]:
        return [self._hash_prefix + key, self._ready]

    async def put(self, timer: Timer, *, replace: bool = False) -> bool:
        args: list[EncodableT] = [
            timer.key,
            timer.kind,
            repr(timer.due),
            timer.payload,
            "1" if replace else "0",
        ]
        return int(await self._put(keys=self._keys(timer.key), args=args)) == 1

    async def get(self, key: str) -> Timer | None:
        fields = await self._redis.hmget(self._hash_prefix + key, "kind", "due", "payload", "token")
        kind, due, payload, token = fields
        if kind is None or due is None or payload is None or token is None:
            return None
        return Timer(key, as_text(kind), float(due), as_bytes(payload), int(token))

    async def cancel(self, key: str) -> bool:
        return int(await self._cancel(keys=self._keys(key), args=[key])) == 1

    async def list(self, prefix: str = "") -> list[Timer]:
        found = []
        ready = cast(list[bytes], await self._redis.zrange(self._ready, 0, -1))
        for key in map(as_text, ready):
            if key.startswith(prefix):
                timer = await self.get(key)
                if timer is not None:
                    found.append(timer)
        return sorted(found, key=lambda t: (t.due, t.key))

    async def claim(
        self, kinds: Iterable[str], now: float, ttl: float, limit: int = 16
    ) -> builtins.list[Timer]:
        args: list[EncodableT] = [self._hash_prefix, repr(now), repr(ttl), limit, *kinds]
        flat = await self._claim(keys=[self._ready], args=args)
        claimed = []
        for i in range(0, len(flat), 5):
            key, kind, due, payload, token = flat[i : i + 5]
            claimed.append(Timer(as_text(key), as_text(kind), float(due), payload, int(token)))
        return claimed

    async def complete(self, timer: Timer, due: float | None, payload: bytes) -> bool:
        args: list[EncodableT] = [
            timer.key,
            str(timer.token),
            "" if due is None else repr(due),
            payload,
        ]
        return int(await self._complete(keys=self._keys(timer.key), args=args)) == 1

    async def unclaim(self, timer: Timer, ready_at: float | None = None) -> None:
        ready = "" if ready_at is None else repr(ready_at)
        await self._unclaim(keys=self._keys(timer.key), args=[timer.key, str(timer.token), ready])

    async def close(self) -> None:
        await self._redis.aclose()
