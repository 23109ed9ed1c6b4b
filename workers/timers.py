"""Timers: due-time records in the session store's backend, fired once by whichever worker
claims them.

A timer is a record (key, kind, due, payload) in the same backend as the session store
(memory, the SQLite file, Redis), so it survives a broker restart and any worker's death: it is
written before the thing that asked for it is acknowledged, and deleted only after its action
has run. `key` is unique per namespace, so scheduling the same key twice is one timer
(idempotent: a redelivered request parks once).

Firing: every worker runs `Timers.run`, which claims due timers of the kinds it registered,
atomically, for a claim lease (`claim_ttl` seconds), runs the action registered for the kind,
and completes the claim (delete, or move to the next due time) fenced by the claim's token.
One claim at a time: no two workers run one timer's action at once. A worker that dies while
firing leaves its claim to expire; the next worker fires the timer again. So an action runs at
least once and, unless a worker dies inside it, exactly once: actions make their effect
idempotent by the timer's key (publish an envelope whose id is derived from it, so the dedup
stage answers a second copy from the stored result instead of running it again).
"""

from __future__ import annotations

import abc
import builtins
import importlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import anyio
import anyio.abc

log = logging.getLogger("agentqueue.timers")

CLAIM_TTL = 10.0  # seconds a claim holds a timer while its action runs
POLL_INTERVAL = 0.2  # seconds between looks for due timers
RETRY_AFTER = 1.0  # seconds before a timer whose action failed is fired again


@dataclass(frozen=True, slots=True)
class Timer:
    """One due-time record; `token` fences the claim that returned it (0: not claimed)."""

    key: str
    kind: str
    due: float  # unix seconds
    payload: bytes = b""
    token: int = 0


# What firing a timer does: return None when it is done (the timer is deleted), or a later due
# time (and optionally a new payload) to fire it again then, as a recurring schedule does.
Fired = float | tuple[float, bytes] | None
Action = Callable[[Timer], Awaitable[Fired]]


class TimerStore(abc.ABC):
    """The backend of timers of one namespace; every method is atomic."""

    url: str

    @abc.abstractmethod
    async def put(self, timer: Timer, *, replace: bool = False) -> bool:
        """Store a timer; False (nothing changed) when its key exists and not `replace`."""

    @abc.abstractmethod
    async def get(self, key: str) -> Timer | None:
        """The timer under `key`, or None."""

    @abc.abstractmethod
    async def cancel(self, key: str) -> bool:
        """Delete the timer under `key`; False when there was none."""

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> list[Timer]:
        """Timers whose key starts with `prefix`, earliest due first."""

    @abc.abstractmethod
    async def claim(
        self, kinds: Iterable[str], now: float, ttl: float, limit: int = 16
    ) -> builtins.list[Timer]:
        """Claim up to `limit` timers of `kinds` due by `now`, each for `ttl` seconds."""

    @abc.abstractmethod
    async def complete(self, timer: Timer, due: float | None, payload: bytes) -> bool:
        """End a claim: delete the timer (`due` None) or move it to `due` with `payload`.

        False (nothing changed) when the claim expired and was taken over, or the timer was
        cancelled or replaced meanwhile."""

    @abc.abstractmethod
    async def unclaim(self, timer: Timer, ready_at: float | None = None) -> None:
        """Give a claimed timer back unfired: claimable again at `ready_at` (default: its due
        time, so at once)."""

    async def close(self) -> None:  # noqa: B027 - the memory store has nothing to close
        """Release connections."""


# Timer stores by session store URL scheme, as "module:class", imported only when used.
TIMER_STORES: dict[str, str] = {
    "memory": "agentqueue.workers.timers:MemoryTimerStore",
    "sqlite": "agentqueue.workers.timers_sqlite:SQLiteTimerStore",
    "redis": "agentqueue.workers.timers_redis:RedisTimerStore",
    "rediss": "agentqueue.workers.timers_redis:RedisTimerStore",
}


def open_timer_store(store_url: str, namespace: str) -> TimerStore:
    """The timers of `namespace` in the backend of the session store at `store_url`."""
    target = TIMER_STORES.get(urlsplit(store_url).scheme)
    if target is None:
        raise ValueError(
            f"no timer store for session store URL {store_url!r};"
            " use memory://, sqlite:///path or redis://host:port/0"
        )
    module, _, name = target.partition(":")
    store_class: Callable[..., TimerStore] = getattr(importlib.import_module(module), name)
    return store_class(store_url, namespace)


@dataclass(slots=True)
class _Record:
    timer: Timer
    ready_at: float  # when it can be claimed: its due time, or when a claim on it ends


# Claim tokens only grow, also across a timer replaced under the same key.
_tokens = itertools.count(time.time_ns() // 1000)
# Per store URL netloc and namespace: key -> record.
_memory_timers: dict[tuple[str, str], dict[str, _Record]] = {}


class MemoryTimerStore(TimerStore):
    """Timers in this process's memory; stores opened on the same URL share them."""

    def __init__(self, url: str = "memory://", namespace: str = "agentqueue") -> None:
        self.url = url
        self._records = _memory_timers.setdefault((urlsplit(url).netloc, namespace), {})

    async def put(self, timer: Timer, *, replace: bool = False) -> bool:
        if timer.key in self._records and not replace:
            return False
        stored = Timer(timer.key, timer.kind, timer.due, timer.payload)
        self._records[timer.key] = _Record(stored, timer.due)
        return True

    async def get(self, key: str) -> Timer | None:
        record = self._records.get(key)
        return None if record is None else record.timer

    async def cancel(self, key: str) -> bool:
        return self._records.pop(key, None) is not None

    async def list(self, prefix: str = "") -> list[Timer]:
        found = [r.timer for k, r in self._records.items() if k.startswith(prefix)]
        return sorted(found, key=lambda t: (t.due, t.key))

    async def claim(
        self, kinds: Iterable[str], now: float, ttl: float, limit: int = 16
    ) -> builtins.list[Timer]:
        wanted = set(kinds)
        due = [r for r in self._records.values() if r.ready_at <= now and r.timer.kind in wanted]
        claimed: list[Timer] = []
        for record in sorted(due, key=lambda r: r.ready_at)[:limit]:
            record.timer = replace(record.timer, token=next(_tokens))
            record.ready_at = now + ttl
            claimed.append(record.timer)
        return claimed

    async def complete(self, timer: Timer, due: float | None, payload: bytes) -> bool:
        record = self._records.get(timer.key)
        if record is None or record.timer.token != timer.token or not timer.token:
            return False
        if due is None:
            del self._records[timer.key]
        else:
            record.timer = replace(record.timer, due=due, payload=payload)
            record.ready_at = due
        return True

    async def unclaim(self, timer: Timer, ready_at: float | None = None) -> None:
        record = self._records.get(timer.key)
        if record is not None and record.timer.token == timer.token:
            record.ready_at = record.timer.due if ready_at is None else ready_at


class Timers:
    """Fires the due timers of the kinds registered on it; one per worker (or per process)."""

    def __init__(
        self,
        store: TimerStore,
        *,
        owner: str,
        claim_ttl: float = CLAIM_TTL,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.owner = owner
        self.claim_ttl = claim_ttl
        self.poll_interval = poll_interval
        self.fired = 0
        self._actions: dict[str, Action] = {}
        self._wake = anyio.Event()

    def register(self, kind: str, action: Action) -> None:
        """Fire timers of `kind` with `action` (see `Action`); one action per kind."""
        if kind in self._actions:
            raise ValueError(f"timer kind {kind!r} already has an action; register it once")
        self._actions[kind] = action

    @property
    def kinds(self) -> list[str]:
        """The kinds this instance fires."""
        return sorted(self._actions)

    async def schedule(
        self, key: str, kind: str, due: float, payload: bytes = b"", *, replace: bool = False
    ) -> bool:
        """Store a timer (False when `key` exists and not `replace`); fires at `due`."""
        stored = await self.store.put(Timer(key, kind, due, payload), replace=replace)
        if stored and due <= time.time() + self.poll_interval:
            self._wake.set()  # due (almost) now: do not wait out the poll interval
        return stored

    async def cancel(self, key: str) -> bool:
        """Delete the timer under `key` before it fires; False when there is none."""
        return await self.store.cancel(key)

    async def fire_due(self, now: float | None = None) -> int:
        """Claim and fire what is due by `now` (default: now) once; returns how many fired."""
        if not self._actions:
            return 0
        now = time.time() if now is None else now
        fired = 0
        for timer in await self.store.claim(self._actions, now, self.claim_ttl):
            try:
                with anyio.fail_after(self.claim_ttl * 0.8):  # done before another may claim
                    outcome = await self._actions[timer.kind](timer)
            except Exception as exc:  # e.g. the broker is away: the timer waits in the store
                log.warning(
                    "timer %s (%s) could not fire (%s: %s); trying again in %.0f s",
                    timer.key,
                    timer.kind,
                    type(exc).__name__,
                    exc,
                    RETRY_AFTER,
                )
                await self.store.unclaim(timer, time.time() + RETRY_AFTER)
                continue
            if outcome is None:
                due, payload = None, timer.payload
            elif isinstance(outcome, tuple):
                due, payload = outcome
            else:
                due, payload = outcome, timer.payload
            if not await self.store.complete(timer, due, payload):
                log.warning("timer %s was taken over or changed while it fired", timer.key)
            fired += 1
        self.fired += fired
        return fired

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Fire due timers until cancelled; a backend that is away is tried again."""
        task_status.started()
        while True:
            try:
                while await self.fire_due():
                    pass  # a full batch: there may be more due
            except Exception as exc:  # the backend is away: the timers wait in it
                log.warning("cannot fire timers (%s); trying again", exc)
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def close(self) -> None:
        """Close the backend connection."""
        await self.store.close()
