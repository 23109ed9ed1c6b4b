"""Partition-keyed routing: which partition of a queue family a key (a session) belongs to.

`partition_for(key, n)` is Lamping and Veach's jump consistent hash of a 64-bit integer, the
integer being the first 8 bytes of BLAKE2b-512 of the key's UTF-8 bytes read big-endian:

    h = int.from_bytes(blake2b(key.encode("utf-8")).digest()[:8], "big")
    b, j = -1, 0
    while j < n:
        b = j
        h = (h * 2862933555777941757 + 1) mod 2**64
        j = floor((b + 1) * 2**31 / ((h >> 33) + 1))
    return b

so a Go or Java publisher computes the same partition (see the vectors in the README and in
tests/protocol/test_partitioning.py). Growing `n` to `n + 1` moves about 1/(n+1) of the keys.
"""

from __future__ import annotations

from hashlib import blake2b

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757


def key_hash(key: str) -> int:
    """The 64-bit integer a key hashes to: BLAKE2b-512's first 8 bytes, big-endian."""
    return int.from_bytes(blake2b(key.encode("utf-8")).digest()[:8], "big")


def jump_hash(h: int, n: int) -> int:
    """Jump consistent hash of the 64-bit integer `h` into `n` buckets."""
    b, j = -1, 0
    while j < n:
        b = j
        h = (h * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (float(1 << 31) / float((h >> 33) + 1)))
    return b


def partition_for(key: str, n: int) -> int:
    """The partition in `range(n)` that owns `key`."""
    if n < 1:
        raise ValueError(f"partition count must be at least 1, got {n}")
    return jump_hash(key_hash(key), n)


def parse_partitions(spec: str, n: int) -> list[int]:
    """Partitions from a spec like "0-7,12" (or "all"), checked against a family of `n`."""
    if spec.strip() in ("", "all", "*"):
        return list(range(n))
    chosen: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad partition spec {spec!r}: use ranges like 0-7,12") from None
        if not 0 <= first <= last < n:
            raise ValueError(f"partition range {part.strip()!r} is outside 0-{n - 1}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)
