"""Replies of redis-py as our clients get them: bytes, never str.

redis-py types every reply as `bytes | str` because a client made with `decode_responses=True`
gets str; ours never are, so these narrow a reply to what it is and keep the check in one place.
"""

from __future__ import annotations


def as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: bytes | str) -> str:
    """A reply as text (UTF-8)."""
    return value.decode() if isinstance(value, bytes) else value
