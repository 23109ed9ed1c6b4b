"""A rate limit per model shared by every worker of a namespace, and the token usage it records.

    AGENTQUEUE_RATE_LIMIT="requests=500,tokens=200000,window=60"

Each model call first takes a grant: it is given when, over the last `window + slack` seconds
(a **sliding** window: a log of the grants, not fixed buckets; `slack`, default 0.25 s, covers
the varying time from a grant to the call's arrival at the provider), fewer than `requests`
grants were given, at least `(window + slack) / requests` seconds after the previous grant
(paced: a provider that counts on its own clock never sees a window's worth arrive as one
burst), and the tokens charged
to the window's grants plus this call's estimate stay within `tokens`. Otherwise the call waits
for room; it never fails for it (the request's deadline still bounds the wait). A grant is
charged the prompt's estimate (AgentScope's `count_tokens`) and corrected to the real usage when
the call ends; a call that outlives the window does not carry its tokens into the next one. A
429 from the provider closes the budget of that model for everyone until its `Retry-After` has
passed (one window when it gives none).

The log lives in the session store's backend, in tables/keys of its own: Redis (Lua scripts on
the Redis server's clock), SQLite (one transaction per grant) or this process's memory. Every
finished call is also added to per-second usage counters, which `agentqueue usage` reads.
"""

from __future__ import annotations

import abc
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio

from agentqueue.protocol.ids import new_id
from agentqueue.workers.errors import ModelConfigError

USAGE_KEPT = 86400.0  # seconds of per-second usage counters kept
MIN_WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `requests` calls and `tokens` tokens per model in any `window` seconds."""

    requests: int | None = None
    tokens: int | None = None
    window: float = 60.0
    # Seconds added to the window the grants are counted over: a call reaches the provider some
    # time after its grant, and that time varies (a busy event loop, a new connection), so
    # grants exactly `window` apart can arrive closer together than that. 0.25 s covers the
    # jitter seen here on a loaded 2-core machine; against a 60 s window it costs 0.4%.
    slack: float = 0.25

    def __post_init__(self) -> None:
        if self.requests is None and self.tokens is None:
            raise ModelConfigError("a rate limit needs requests=N, tokens=N or both")
        for name in ("requests", "tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ModelConfigError(f"rate limit {name} must be at least 1, got {value}")
        if self.window < MIN_WINDOW:
            raise ModelConfigError(
                f"rate limit window must be at least {MIN_WINDOW:g} s, got {self.window:g}"
            )
        if not 0 <= self.slack <= self.window:
            raise ModelConfigError(
                f"rate limit slack must be between 0 and the window ({self.window:g} s),"
                f" got {self.slack:g}"
            )

    @property
    def span(self) -> float:
        """The seconds grants are counted over: the window and its slack."""
        return self.window + self.slack

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """`requests=N,tokens=N,window=SECONDS,slack=SECONDS` (any of the first two; window
        default 60, slack 0.25)."""
        values: dict[str, float] = {}
        for part in text.replace(";", ",").split(","):
            if not part.strip():
                continue
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("requests", "tokens", "window", "slack"):
                raise ModelConfigError(
                    f"AGENTQUEUE_RATE_LIMIT={text!r}: cannot read {part.strip()!r};"
                    ' write it like "requests=500,tokens=200000,window=60"'
                )
            try:
                values[key] = float(raw.strip().removesuffix("s"))
            except ValueError:
                raise ModelConfigError(
                    f"AGENTQUEUE_RATE_LIMIT={text!r}: {key} must be a number, got {raw.strip()!r}"
                ) from None
        requests, tokens = values.get("requests"), values.get("tokens")
        return cls(
            requests=None if requests is None else int(requests),
            tokens=None if tokens is None else int(tokens),
            window=values.get("window", 60.0),
            slack=values.get("slack", 0.25),
        )

    def describe(self) -> str:
        """E.g. "500 requests and 200000 tokens per 60 s (sliding, 0.25 s slack)"."""
        parts = []
        if self.requests is not None:
            parts.append(f"{self.requests} requests")
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        return f"{' and '.join(parts)} per {self.window:g} s (sliding, {self.slack:g} s slack)"


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """Calls and tokens of one model over a stretch of time."""

    provider: str
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Grant:
    """The right to make one model call, charged `tokens` until settled."""

    id: str
    tokens: int
    waited: float = 0.0  # seconds spent waiting for room (0: granted at the first try)
    tries: int = 0  # times it was told to wait


class LimitBackend(abc.ABC):
    """Where grants, pauses and usage counters live; every method is one atomic step."""

    url: str

    @abc.abstractmethod
    async def try_acquire(self, key: str, grant_id: str, tokens: int, limit: RateLimit) -> float:
        """Give the grant and return 0, or return the seconds to wait before trying again."""

    @abc.abstractmethod
    async def settle(self, key: str, grant_id: str, tokens: int) -> None:
        """Charge the grant its real tokens (no-op once it left the window)."""

    @abc.abstractmethod
    async def pause(self, key: str, seconds: float) -> None:
        """Give no grant for `key` for the next `seconds` (the longest pause wins)."""

    @abc.abstractmethod
    async def record(
        self, namespace: str, provider: str, model: str, prompt: int, completion: int
    ) -> None:
        """Add one finished call to the usage counters."""

    @abc.abstractmethod
    async def usage(self, namespace: str, window: float) -> list[ModelUsage]:
        """Usage per model over the last `window` seconds, most tokens first."""

    async def close(self) -> None:  # noqa: B027 - the memory backend has nothing to close
        """Release connections."""


def limit_key(namespace: str, provider: str, model: str) -> str:
    """The key of one model's budget in a namespace."""
    return f"{namespace}\x1f{provider}\x1f{model}"


class ModelLimiter:
    """The shared budget of one model in one namespace, and its usage counters."""

    def __init__(
        self,
        backend: LimitBackend,
        namespace: str,
        provider: str,
        model: str,
        limit: RateLimit | None,
    ) -> None:
        self.backend = backend
        self.namespace, self.provider, self.model = namespace, provider, model
        self.limit = limit
        self.key = limit_key(namespace, provider, model)

    async def acquire(self, tokens: int) -> Grant:
        """Wait until the budget has room for one call of about `tokens` tokens, and take it."""
        grant = Grant(new_id(), max(0, tokens))
        if self.limit is None:
            return grant
        started = time.monotonic()
        while True:
            wait = await self.backend.try_acquire(self.key, grant.id, grant.tokens, self.limit)
            if wait <= 0:
                if grant.tries:
                    grant.waited = time.monotonic() - started
                return grant
            grant.tries += 1
            # Jitter, so the waiters of all workers do not all come back at the same instant.
            await anyio.sleep(min(wait, self.limit.window) + random.uniform(0, 0.02))

    async def settle(
        self, grant: Grant, prompt: int, completion: int, *, charge: int | None = None
    ) -> None:
        """Record a finished call with its usage; the grant is charged `charge` (default: the
        tokens used)."""
        if self.limit is not None:
            spent = prompt + completion if charge is None else charge
            await self.backend.settle(self.key, grant.id, spent)
        await self.backend.record(self.namespace, self.provider, self.model, prompt, completion)

    async def release(self, grant: Grant, tokens: int) -> None:
        """A call that failed: it stays counted as a request, charged `tokens`."""
        if self.limit is not None:
            await self.backend.settle(self.key, grant.id, tokens)

    async def refused(self, retry_after: float | None) -> None:
        """The provider answered 429: close the budget for everyone for its Retry-After."""
        if self.limit is not None:
            await self.backend.pause(self.key, retry_after or self.limit.window)


_current: ContextVar[LimitBackend | None] = ContextVar("agentqueue_limit_backend", default=None)


@contextmanager
def use_backend(backend: LimitBackend) -> Iterator[None]:
    """Make model calls in this context use `backend` (how a pipeline middleware plugs in)."""
    token = _current.set(backend)
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> LimitBackend | None:
    """The backend set by `use_backend` around the running call, if any."""
    return _current.get()


# --- memory ---------------------------------------------------------------------------------


@dataclass
class _Budget:
    grants: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    tokens: int = 0
    paused_until: float = 0.0


@dataclass
class _MemoryState:
    budgets: dict[str, _Budget] = field(default_factory=dict)
    usage: dict[tuple[str, str, str], dict[int, list[int]]] = field(default_factory=dict)


_memory_states: dict[str, _MemoryState] = {}


class MemoryLimitBackend(LimitBackend):
    """This process's memory; backends opened on the same URL share it (the embedded store)."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._state = _memory_states.setdefault(urlsplit(url).netloc or "default", _MemoryState())

    def _budget(self, key: str, window: float, now: float) -> _Budget:
        budget = self._state.budgets.setdefault(key, _Budget())
        while budget.grants:
            grant_id, (at, tokens) = next(iter(budget.grants.items()))
            if at > now - window:
                break
            del budget.grants[grant_id]
            budget.tokens -= tokens
        return budget

    async def try_acquire(self, key: str, grant_id: str, tokens: int, limit: RateLimit) -> float:
        now = time.time()
        budget = self._budget(key, limit.span, now)
        wait = seconds_until_room(
            budget.grants.values(), budget.tokens, budget.paused_until, now, tokens, limit
        )
        if wait <= 0:
            budget.grants[grant_id] = (now, tokens)
            budget.tokens += tokens
        return wait

    async def settle(self, key: str, grant_id: str, tokens: int) -> None:
        budget = self._state.budgets.get(key)
        if budget is None or grant_id not in budget.grants:
            return
        at, charged = budget.grants[grant_id]
        budget.grants[grant_id] = (at, tokens)
        budget.tokens += tokens - charged

    async def pause(self, key: str, seconds: float) -> None:
        budget = self._state.budgets.setdefault(key, _Budget())
        budget.paused_until = max(budget.paused_until, time.time() + seconds)

    async def record(
        self, namespace: str, provider: str, model: str, prompt: int, completion: int
    ) -> None:
        now = time.time()
        seconds = self._state.usage.setdefault((namespace, provider, model), {})
        counter = seconds.setdefault(int(now), [0, 0, 0])
        counter[0] += 1
        counter[1] += prompt
        counter[2] += completion
        for second in [s for s in seconds if s < now - USAGE_KEPT]:
            del seconds[second]

    async def usage(self, namespace: str, window: float) -> list[ModelUsage]:
        since = time.time() - window
        found = []
        for (ns, provider, model), seconds in self._state.usage.items():
            if ns != namespace:
                continue
            totals = [0, 0, 0]
            for second, counter in seconds.items():
                if second + 1 > since:  # the counter of second s covers [s, s + 1)
                    totals = [a + b for a, b in zip(totals, counter, strict=True)]
            if totals[0]:
                found.append(ModelUsage(provider, model, *totals))
        return sorted(found, key=lambda u: -u.total_tokens)


def seconds_until_room(
    grants: Iterable[tuple[float, int]],
    charged: int,
    paused_until: float,
    now: float,
    tokens: int,
    limit: RateLimit,
) -> float:
    """Seconds until a grant of `tokens` fits, given the (at, tokens) grants in the window."""
    if paused_until > now:
        return paused_until - now
    entries = list(grants)
    if limit.requests is not None and len(entries) >= limit.requests:
        oldest = entries[len(entries) - limit.requests][0]
        return oldest + limit.span - now
    if limit.requests is not None and entries:
        # Paced: one grant per window/requests, so a window's grants never leave as one burst
        # (whose requests the provider would see smeared into the next window).
        due = max(at for at, _ in entries) + limit.span / limit.requests
        if due > now:
            return due - now
    if limit.tokens is not None and entries and charged + tokens > limit.tokens:
        freed = 0
        for at, spent in entries:
            freed += spent
            if charged - freed + tokens <= limit.tokens:
                return at + limit.span - now
        return entries[-1][0] + limit.span - now
    return 0.0
