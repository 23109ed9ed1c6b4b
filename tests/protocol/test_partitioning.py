"""partition_for must be reproducible by any publisher in any language: fixed vectors."""

from __future__ import annotations

import pytest

from agentqueue.protocol.partitioning import key_hash, parse_partitions, partition_for

# Checked against a C implementation of Lamping & Veach's jump hash (the paper's code).
VECTORS = [
    ("s1", 16, 0x44E7845DF8B490F7, 4),
    ("session-42", 16, 0x08F036718599F528, 6),
    ("user:1001", 8, 0x24C580F64B17C1CE, 7),
    ("", 16, 0x786A02F742015903, 5),
    ("Zoë", 32, 0x7B2F91D8F9C9252D, 8),
    ("a", 1, 0x333FCB4EE1AA7C11, 0),
    ("a", 1000, 0x333FCB4EE1AA7C11, 129),
    ("conversation/7f3a", 64, 0x3367DC4AB761E07A, 61),
]


@pytest.mark.parametrize(("key", "n", "hashed", "partition"), VECTORS)
def test_partition_vectors_match_the_documented_algorithm(
    key: str, n: int, hashed: int, partition: int
) -> None:
    assert key_hash(key) == hashed
    assert partition_for(key, n) == partition


def test_growing_the_partition_count_moves_about_one_in_n_keys() -> None:
    keys = [f"session-{i}" for i in range(20_000)]
    moved = sum(partition_for(k, 16) != partition_for(k, 17) for k in keys)
    assert 0.8 / 17 < moved / len(keys) < 1.2 / 17
    # and a key that moves only ever moves to the new partition
    assert all(
        partition_for(k, 17) == 16 for k in keys if partition_for(k, 16) != partition_for(k, 17)
    )


def test_keys_spread_evenly_over_partitions() -> None:
    counts = [0] * 16
    for i in range(16_000):
        counts[partition_for(f"s{i}", 16)] += 1
    assert min(counts) > 800 and max(counts) < 1200


def test_partition_specs_parse_ranges_and_reject_out_of_range() -> None:
    assert parse_partitions("0-3,7", 8) == [0, 1, 2, 3, 7]
    assert parse_partitions("all", 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside 0-7"):
        parse_partitions("6-9", 8)
