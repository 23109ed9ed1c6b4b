"""Signed envelopes: HMAC-SHA256 over the encoded bytes, with a key id so keys can rotate.

A signed message is the envelope's JSON with one member appended last:

    <envelope JSON without its closing brace>,"sig":"<key id>:<hex HMAC-SHA256>"}

and the HMAC is taken over the envelope JSON as it was before the member was appended (the same
bytes with `}` in place of `,"sig":…}`). A publisher in another language signs the bytes it
sends the same way. The key ring signs with its first key and accepts every key in it, so a new
key is rolled out first as an accepted key, then made the signing key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from agentqueue.protocol.errors import ProtocolError

_MARK = b',"sig":"'


class KeyRing:
    """Signing keys by id: the first signs, all verify. Never prints a secret."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        for key_id, secret in keys:
            if not key_id or not key_id.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"key id {key_id!r} must be letters, digits, '-' or '_'")
            if len(secret) < 16:
                raise ValueError(f"the secret of key {key_id!r} is shorter than 16 bytes")
        self._keys = dict(keys)
        self._signing_id = keys[0][0]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Keys from `id:secret,id:secret` (signing key first), as in AGENTQUEUE_SIGNING_KEYS."""
        keys: list[tuple[str, bytes]] = []
        for part in spec.split(","):
            key_id, sep, secret = part.strip().partition(":")
            if not sep:
                raise ValueError(
                    "signing keys must look like 'id:secret[,id:secret…]' (value not shown)"
                )
            keys.append((key_id, secret.encode()))
        return cls(keys)

    @property
    def key_ids(self) -> list[str]:
        """Accepted key ids, the signing one first."""
        return list(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self.key_ids})"

    def holds(self, secret: bytes) -> bool:
        """Whether `secret` is one of the ring's secrets (so must not be reused elsewhere)."""
        return any(hmac.compare_digest(secret, mine) for mine in self._keys.values())

    def _mac(self, key_id: str, data: bytes) -> str:
        return hmac.new(self._keys[key_id], data, hashlib.sha256).hexdigest()

    def sign(self, data: bytes) -> bytes:
        """The encoded envelope with its signature appended as the last member."""
        if not data.endswith(b"}"):
            raise ValueError("only an encoded envelope (a JSON object) can be signed")
        mac = self._mac(self._signing_id, data)
        return b"".join((data[:-1], _MARK, self._signing_id.encode(), b":", mac.encode(), b'"}'))

    def verify(self, data: bytes) -> None:
        """Raise `ProtocolError` saying why unless `data` carries a valid signature of ours."""
        accepted = ", ".join(self.key_ids)
        at = data.rfind(_MARK)
        if at < 0 or not data.endswith(b'"}'):
            raise ProtocolError(
                f"unsigned envelope refused: this worker runs only envelopes signed with one of"
                f" its keys ({accepted})",
                field="$.sig",
            )
        # Bytes, never text: the member comes from the wire and may hold any byte (non-ASCII,
        # invalid UTF-8), which `hmac.compare_digest` refuses to compare as `str`.
        raw_id, _, mac = data[at + len(_MARK) : -2].partition(b":")
        key_id = raw_id.decode("ascii", "backslashreplace")
        if key_id not in self._keys:
            shown = repr(key_id) if len(key_id) <= 40 else repr(key_id[:40]) + "…"
            raise ProtocolError(
                f"envelope signed with unknown key id {shown} (this worker accepts {accepted})",
                field="$.sig",
            )
        expected = self._mac(key_id, data[:at] + b"}").encode()
        if not hmac.compare_digest(expected, mac):
            raise ProtocolError(
                f"bad signature for key id {key_id!r}: the envelope was altered or signed with"
                " another secret",
                field="$.sig",
            )
