"""Model rate limits and usage in the Redis of the session store, under keys of their own.

A budget is a sorted set of grants (scored by time), a hash of what each grant is charged and a
hash with the total and the pause; each step is one Lua script on the Redis server's clock, so
workers on many machines share one exact sliding window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as redis

from agentqueue.workers.errors import ModelConfigError
from agentqueue.workers.rate_limit import LimitBackend, ModelUsage, RateLimit
from agentqueue.workers.redis_replies import as_text

T = TypeVar("T")

PREFIX = "agentqueue"
SECOND_BUCKETS = 3600  # windows up to an hour are summed from per-second counters
KEPT = 86400 + 120  # seconds the minute counters live
STEP_GRACE = 5.0  # seconds close() waits for steps it cancelled (redis-py may ignore a cancel)

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# KEYS: grants (zset id -> at), charges (hash id -> tokens), meta (hash charged, paused_until)
# ARGV: grant id, tokens, request limit (0: none), token limit (0: none), window seconds
_ACQUIRE = (
    _NOW
    + """
local window = tonumber(ARGV[5])
local cutoff = now - window
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
if #old > 0 then
  local freed = 0
  for _, id in ipairs(old) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], id) or '0')
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  if freed > 0 then redis.call('HINCRBY', KEYS[3], 'charged', 0 - freed) end
end
local count = redis.call('ZCARD', KEYS[1])
if count == 0 then redis.call('HSET', KEYS[3], 'charged', 0) end
local paused = tonumber(redis.call('HGET', KEYS[3], 'paused_until') or '0')
if paused > now then return tostring(paused - now) end
local tokens = tonumber(ARGV[2])
local requests = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
if requests > 0 and count >= requests then
  local oldest = redis.call('ZRANGE', KEYS[1], count - requests, count - requests, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
if requests > 0 and count > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  local due = tonumber(newest[2]) + window / requests
  if due > now then return tostring(due - now) end
end
local charged = tonumber(redis.call('HGET', KEYS[3], 'charged') or '0')
if limit > 0 and count > 0 and charged + tokens > limit then
  local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #all, 2 do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], all[i]) or '0')
    if charged - freed + tokens <= limit then
      return tostring(tonumber(all[i + 1]) + window - now)
    end
  end
  return tostring(tonumber(all[#all]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], tokens)
redis.call('HINCRBY', KEYS[3], 'charged', tokens)
local ttl = math.ceil(window * 1000) + 60000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
return '0'
"""
)

# KEYS: charges, meta; ARGV: grant id, tokens
_SETTLE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'charged', tonumber(ARGV[2]) - tonumber(old))
return 1
"""

# KEYS: meta; ARGV: seconds
_PAUSE = (
    _NOW
    + """
local until_ = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
if until_ > paused then redis.call('HSET', KEYS[1], 'paused_until', tostring(until_)) end
local ttl = math.ceil(tonumber(ARGV[1]) * 1000) + 60000
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
)


class RedisLimitBackend(LimitBackend):
    """Budgets and usage counters under `agentqueue:ratelimit:` and `agentqueue:usage:` keys."""

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self.url = url
        if not urlsplit(url).hostname:
            raise ModelConfigError(f"redis URL {url!r} names no host; use redis://host:6379/0")
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self._pause = self._redis.register_script(_PAUSE)
        self._steps: set[asyncio.Task[Any]] = set()  # Redis steps running now (see `_step`)

    async def _step(self, step: Awaitable[T]) -> T:
        """Run one Redis step so that cancelling the caller always cancels it.

        redis-py 8.1 can swallow a cancellation that lands inside a command (the cancelled task
        then simply carries on): a turn interrupted while it waits for room would keep waiting.
        The step runs as a task of its own, which the backend owns until it ends (`close()`
        cancels the ones left); the caller's await is shielded from it, so the caller's
        cancellation propagates at once.
        """
        task = asyncio.ensure_future(step)
        self._steps.add(task)
        task.add_done_callback(self._ended)
        return await asyncio.shield(task)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._steps.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a step its caller left is never "not retrieved"

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}:ratelimit:{{{key.replace(chr(0x1F), '|')}}}"  # one hash slot
        return [f"{base}:grants", f"{base}:charges", f"{base}:meta"]

    async def try_acquire(self, key: str, grant_id: str, tokens: int, limit: RateLimit) -> float:
        wait = await self._step(
            self._acquire(
                keys=self._keys(key),
                args=[grant_id, tokens, limit.requests or 0, limit.tokens or 0, limit.span],
            )
        )
        return float(wait)

    async def settle(self, key: str, grant_id: str, tokens: int) -> None:
        await self._step(self._settle(keys=self._keys(key)[1:], args=[grant_id, tokens]))

    async def pause(self, key: str, seconds: float) -> None:
        await self._step(self._pause(keys=self._keys(key)[2:], args=[seconds]))

    def _usage_key(self, namespace: str, member: str, unit: str, at: int) -> str:
        return f"{self._prefix}:usage:{namespace}:{member}:{unit}:{at}"

    async def record(
        self, namespace: str, provider: str, model: str, prompt: int, completion: int
    ) -> None:
        await self._step(self._record(namespace, provider, model, prompt, completion))

    async def _record(
        self, namespace: str, provider: str, model: str, prompt: int, completion: int
    ) -> None:
        now = int(time.time())
        member = f"{provider}|{model}"
        async with self._redis.pipeline(transaction=True) as pipe:
            for unit, at, ttl in (
                ("s", now, SECOND_BUCKETS + 120),
                ("m", now // 60, KEPT),
            ):
                key = self._usage_key(namespace, member, unit, at)
                pipe.hincrby(key, "calls", 1)
                pipe.hincrby(key, "prompt", prompt)
                pipe.hincrby(key, "completion", completion)
                pipe.expire(key, ttl)
            models = f"{self._prefix}:usage:{namespace}:models"
            pipe.sadd(models, member)
            pipe.expire(models, KEPT)
            await pipe.execute()

    async def usage(self, namespace: str, window: float) -> list[ModelUsage]:
        now = time.time()
        members = sorted(
            as_text(m)
            for m in await self._redis.smembers(f"{self._prefix}:usage:{namespace}:models")
        )
        if window <= SECOND_BUCKETS:
            unit, first, last = "s", math.floor(now - window), int(now)
        else:
            unit, first, last = "m", math.floor((now - window) / 60), int(now) // 60
        found = []
        for member in members:
            async with self._redis.pipeline(transaction=False) as pipe:
                for at in range(first, last + 1):
                    pipe.hmget(
                        self._usage_key(namespace, member, unit, at),
                        "calls",
                        "prompt",
                        "completion",
                    )
                rows = await pipe.execute()
            totals = [0, 0, 0]
            for row in rows:
                totals = [t + int(v or 0) for t, v in zip(totals, row, strict=True)]
            if totals[0]:
                provider, _, model = member.partition("|")
                found.append(ModelUsage(provider, model, *totals))
        return sorted(found, key=lambda u: -u.total_tokens)

    async def close(self) -> None:
        steps = list(self._steps)
        for task in steps:
            task.cancel()
        if steps:
            await asyncio.wait(steps, timeout=STEP_GRACE)
        await self._redis.aclose()
