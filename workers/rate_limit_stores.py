"""Where a model's rate limits are kept: the backend for a store URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from agentqueue.workers.errors import ModelConfigError
from agentqueue.workers.rate_limit import LimitBackend, MemoryLimitBackend
from agentqueue.workers.rate_limit_redis import RedisLimitBackend
from agentqueue.workers.rate_limit_sqlite import SQLiteLimitBackend


def check_limit_store(url: str) -> None:
    """Refuse a URL no backend can serve, before anything is opened."""
    if urlsplit(url).scheme not in ("memory", "sqlite", "redis", "rediss"):
        raise ModelConfigError(
            f"no rate limit store for URL {url!r}; use memory://, sqlite:///path or redis://host/0"
        )


def open_limit_backend(url: str) -> LimitBackend:
    """The backend for a store URL: memory://, sqlite:///path or redis://host:port/db."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryLimitBackend(url)
    if scheme == "sqlite":
        return SQLiteLimitBackend(url)
    if scheme in ("redis", "rediss"):
        return RedisLimitBackend(url)
    raise ModelConfigError(
        f"no rate limit store for URL {url!r}; use memory://, sqlite:///path or redis://host/0"
    )
