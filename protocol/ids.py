"""Identifiers for envelopes and requests: random, URL-safe, sortable by nothing."""

from __future__ import annotations

import os


def new_id() -> str:
    """A fresh 128-bit random id as 32 hex characters."""
    return os.urandom(16).hex()
