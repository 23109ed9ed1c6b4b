"""Stream logs as Redis streams beside the sessions: followers block on `XREAD`, no polling.

One Redis stream per request, `agentqueue:stream:{request id}`, whose entry ids are the
events' `seq` (`<seq>-1`; `0-1` opens the log), so a repeated `seq` is refused by Redis itself
and `XREAD` from `<seq>-1` returns exactly the events after it. Appends are plain `XADD`s,
a batch in one pipeline. `MAXLEN` bounds the count;
the key expires `retention` after its last event.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from agentqueue.broker.urls import redact_url
from agentqueue.workers.redis_replies import as_text
from agentqueue.workers.stream_log import (
    DEFAULT_STREAM_EVENTS,
    DEFAULT_STREAM_RETENTION,
    Kept,
    StreamLog,
)

# KEYS: the stream; ARGV: retention_ms, maxlen. Returns the newest entry's id and attempt.
_OPEN = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '0-1', 'attempt', '0', 'data', '')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {'0-1', '0'}
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {last[1][1], last[1][2][2]}
"""


# A stream entry as our (bytes) clients get it: its id and its fields; redis-py types it loosely.
_Entry = tuple[bytes, dict[bytes, bytes]]


def _seq(entry_id: bytes | str) -> int:
    return int(as_text(entry_id).split("-", 1)[0])


def _kept(entry_id: bytes, fields: dict[bytes, bytes]) -> Kept:
    return Kept(_seq(entry_id), int(fields[b"attempt"]), bytes(fields[b"data"]))


class RedisStreamLog(StreamLog):
    """Request logs as Redis streams under `agentqueue:stream:` keys."""

    def __init__(
        self,
        url: str,
        *,
        max_events: int = DEFAULT_STREAM_EVENTS,
        retention: float = DEFAULT_STREAM_RETENTION,
        prefix: str = "agentqueue",
    ) -> None:
        self.url, self.max_events, self.retention = url, max_events, retention
        if not urlsplit(url).hostname:
            raise ValueError(
                f"redis store URL {redact_url(url)!r} names no host; use redis://host:6379/0"
            )
        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix
        self._retention_ms = max(1, round(retention * 1000))
        self._open = self._redis.register_script(_OPEN)

    def _key(self, request_id: str) -> str:
        return f"{self._prefix}:stream:{{{request_id}}}"

    async def open(self, request_id: str) -> tuple[int, int]:
        entry_id, attempt = await self._open(
            keys=[self._key(request_id)], args=[self._retention_ms, self.max_events]
        )
        return _seq(entry_id), int(attempt)

    async def append(self, request_id: str, kept: Kept) -> None:
        await self.append_many(request_id, [kept])

    async def append_many(self, request_id: str, kept: list[Kept]) -> None:
        # Plain commands in one pipeline: one write and one round trip per batch (a script
        # would cost redis-py a SCRIPT EXISTS round trip per pipeline).
        key = self._key(request_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in kept:
                fields: dict[FieldT, EncodableT] = {"attempt": entry.attempt, "data": entry.data}
                # MAXLEN max_events: the entry that opened the log is the first to go.
                pipe.xadd(
                    key, fields, id=f"{entry.seq}-1", maxlen=self.max_events, approximate=False
                )
            pipe.pexpire(key, self._retention_ms)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            # An id used before is a repeated seq (a redelivered answer): kept once, as asked.
            if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                raise result

    async def read(self, request_id: str, after: int) -> list[Kept] | None:
        key = self._key(request_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.xrange(key, min=f"{after + 1}-0")
            exists, entries = await pipe.execute()
        entries = cast(list[_Entry], entries)
        if not exists:
            return None
        return [_kept(i, f) for i, f in entries if _seq(i) > 0]

    async def last(self, request_id: str) -> Kept | None:
        entries = cast(list[_Entry], await self._redis.xrevrange(self._key(request_id), count=1))
        if not entries or _seq(entries[0][0]) == 0:
            return None
        return _kept(*entries[0])

    async def wait(self, request_id: str, after: int, timeout: float) -> list[Kept] | None:
        key = self._key(request_id)
        found = cast(
            list[tuple[bytes, list[_Entry]]],
            await self._redis.xread({key: f"{after}-1"}, block=max(1, int(timeout * 1000))),
        )
        if not found:
            return [] if await self._redis.exists(key) else None
        return [_kept(i, f) for i, f in found[0][1] if _seq(i) > after]

    async def close(self) -> None:
        await self._redis.aclose()
