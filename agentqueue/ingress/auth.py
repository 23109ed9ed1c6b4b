"""Who may use the ingress: Standard Webhooks signatures on POSTs, read tokens on the rest.

A POST is authenticated the way Standard Webhooks (https://www.standardwebhooks.com) senders
sign, so Svix and the other libraries work as they are:

    webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W
    webhook-timestamp: 1674087231                         (unix seconds)
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">  [v1,… for more keys]

under a secret `whsec_<base64 of 24 to 64 random bytes>`. The id and the time are signed with
the body, so a captured request can be neither aimed at another session nor replayed late:
a timestamp more than `tolerance` (300 s) from the ingress's clock is refused, and so is an id
already accepted while its timestamp is fresh (`ReplayWindow`).

The replay window lives in the memory of one ingress process. A replay sent to another replica
is not refused there, but it cannot do anything new: the request id and the session come from
the signed content, so the replica publishes the same envelope id to the same session, and the
worker answers it from the stored result instead of running it again.

What a POST's answer names is read with `Authorization: Bearer <token>`, where the token is
`read_token(secret, request_id)`: an HMAC only the holders of the secret can compute, returned
in the 202 answer so a sender need not compute it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentqueue.ingress.requests import IngressError

SECRET_PREFIX = "whsec_"
TOLERANCE = 300.0  # seconds a webhook-timestamp may be from the ingress's clock, either way
MAX_ID_LENGTH = 256
_READ = b"agentqueue-ingress-read\0"
_REQUEST = b"agentqueue-ingress-request\0"
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAKE_SECRET = (
    "python -c \"import base64,os; print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
)


@dataclass(frozen=True, slots=True)
class Signed:
    """A POST whose signature checked out: its webhook id and timestamp."""

    webhook_id: str
    timestamp: int


class WebhookKeys:
    """The ingress's Standard Webhooks secrets: the first derives ids and tokens, all verify."""

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("the ingress needs at least one signing secret")
        self._secrets = tuple(secrets)

    @classmethod
    def parse(cls, spec: str) -> WebhookKeys:
        """`whsec_…` secrets separated by spaces or commas (the current one first); never shown."""
        secrets = []
        for n, part in enumerate(spec.replace(",", " ").split(), 1):
            if not part.startswith(SECRET_PREFIX):
                raise ValueError(
                    f"ingress signing secret {n} does not start with {SECRET_PREFIX!r} (value not"
                    " shown): a Standard Webhooks secret is whsec_ and the base64 of 24 to 64"
                    f" random bytes; make one with {MAKE_SECRET}"
                )
            try:
                raw = base64.b64decode(part[len(SECRET_PREFIX) :], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    f"ingress signing secret {n} is not whsec_ and valid base64 (value not shown)"
                ) from None
            if not 24 <= len(raw) <= 64:
                raise ValueError(
                    f"ingress signing secret {n} holds {len(raw)} bytes; Standard Webhooks"
                    f" secrets hold 24 to 64 (make one with {MAKE_SECRET})"
                )
            secrets.append(raw)
        if not secrets:
            raise ValueError("no ingress signing secret given (an empty value)")
        return cls(secrets)

    def __repr__(self) -> str:
        return f"WebhookKeys({len(self._secrets)} secrets)"

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        """The webhook-signature header a sender holding these secrets sends (all of them)."""
        return " ".join(f"v1,{_mac(s, webhook_id, timestamp, body)}" for s in self._secrets)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> Signed:
        """The signed id and time, or a 401 `IngressError` naming what is missing or wrong."""
        values = {}
        for name in HEADERS:
            value = headers.get(name, "").strip()
            if not value:
                raise IngressError(
                    401,
                    f"missing {name} header; sign webhooks the Standard Webhooks way"
                    " (webhook-id, webhook-timestamp, webhook-signature: v1,<base64"
                    " HMAC-SHA256 of id.timestamp.body>)",
                    name,
                )
            values[name] = value
        webhook_id, raw_time = values["webhook-id"], values["webhook-timestamp"]
        if len(webhook_id) > MAX_ID_LENGTH or "." in webhook_id or not webhook_id.isprintable():
            raise IngressError(
                401,
                f"webhook-id must be 1 to {MAX_ID_LENGTH} printable characters without '.'",
                "webhook-id",
            )
        if not raw_time.isascii() or not raw_time.isdigit() or len(raw_time) > 12:
            raise IngressError(
                401, f"webhook-timestamp {raw_time[:20]!r} is not unix seconds", "webhook-timestamp"
            )
        timestamp = int(raw_time)
        given = [
            part.partition(",")[2].encode()
            for part in values["webhook-signature"].split()
            if part.startswith("v1,")
        ]
        if not given:
            raise IngressError(
                401,
                "webhook-signature has no v1 signature; send v1,<base64 HMAC-SHA256>",
                "webhook-signature",
            )
        expected = [_mac(s, webhook_id, timestamp, body).encode() for s in self._secrets]
        if not any(hmac.compare_digest(g, e) for g in given for e in expected):
            raise IngressError(
                401,
                "webhook-signature does not match: sign '<webhook-id>.<webhook-timestamp>.<body>'"
                " (the exact bytes sent) with the ingress's secret",
                "webhook-signature",
            )
        skew = (time.time() if now is None else now) - timestamp
        if abs(skew) > TOLERANCE:
            when = f"{skew:.0f} s old" if skew > 0 else f"{-skew:.0f} s in the future"
            raise IngressError(
                401,
                f"webhook-timestamp {timestamp} is {when}; the ingress accepts {TOLERANCE:.0f} s"
                " either side of its clock (check the sender's clock, or resend)",
                "webhook-timestamp",
            )
        return Signed(webhook_id, timestamp)

    def request_id(self, key: str) -> str:
        """A request id for `key` (a webhook id) that only holders of the secret can predict."""
        digest = hmac.new(self._secrets[0], _REQUEST + key.encode(), hashlib.sha256).hexdigest()
        return "wh-" + digest[:32]

    def token(self, request_id: str) -> str:
        """The bearer token that reads and cancels `request_id` (see `read_token`)."""
        return read_token(self._secrets[0], request_id)

    def check_token(self, authorization: str | None, request_id: str) -> None:
        """Raise a 401 `IngressError` unless `authorization` is the request's bearer token."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise IngressError(
                401,
                "this ingress needs Authorization: Bearer <token>, the token of the POST's"
                " 202 answer",
                "Authorization",
            )
        given_bytes = given.strip().encode()
        if not any(
            hmac.compare_digest(given_bytes, read_token(s, request_id).encode())
            for s in self._secrets
        ):
            raise IngressError(401, "the bearer token is not this request's", "Authorization")


def read_token(secret: bytes, request_id: str) -> str:
    """The bearer token for `request_id`: base64url(HMAC-SHA256(secret, label + id)), unpadded."""
    mac = hmac.new(secret, _READ + request_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _mac(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    return base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


class ReplayWindow:
    """Webhook ids accepted while their timestamps are fresh; bounded by `capacity`.

    An id is remembered until its timestamp leaves the tolerance window (after that the
    timestamp check refuses a replay by itself), so memory is bounded by the rate of accepted
    webhooks times twice the tolerance; `capacity` caps it against a flood, and a full window
    refuses new webhooks (503) rather than forgetting ids early, which would let replays in.
    """

    def __init__(self, capacity: int = 100_000, tolerance: float = TOLERANCE) -> None:
        self.capacity = capacity
        self.tolerance = tolerance
        self._ids: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def reserve(self, signed: Signed, now: float | None = None) -> None:
        """Claim the id before publishing; 409 if it was accepted (or is being) already."""
        now = time.time() if now is None else now
        self._forget_expired(now)
        known = self._ids.get(signed.webhook_id)
        if known is not None:
            request_id = known[1]
            if request_id is None:
                raise IngressError(
                    409,
                    f"webhook-id {signed.webhook_id!r} is being accepted right now; a webhook"
                    " is accepted once",
                    "webhook-id",
                )
            raise IngressError(
                409,
                f"webhook-id {signed.webhook_id!r} was already accepted as request"
                f" {request_id!r}; a webhook is accepted once",
                "webhook-id",
            )
        if len(self._ids) >= self.capacity:
            raise IngressError(
                503,
                f"the replay window is full ({self.capacity} webhooks in the last"
                f" {2 * self.tolerance:.0f} s); retry shortly",
                None,
            )
        self._ids[signed.webhook_id] = (signed.timestamp + self.tolerance, None)

    def accepted(self, signed: Signed, request_id: str) -> None:
        """The reserved id was published as `request_id`."""
        expires, _ = self._ids.get(signed.webhook_id, (signed.timestamp + self.tolerance, None))
        self._ids[signed.webhook_id] = (expires, request_id)

    def release(self, signed: Signed) -> None:
        """Publishing failed: the sender may try the same id again."""
        self._ids.pop(signed.webhook_id, None)

    def _forget_expired(self, now: float) -> None:
        # Ids are in the order they came; each expires at most twice the tolerance after it
        # came, so dropping from the front keeps the window bounded.
        while self._ids:
            webhook_id, (expires, _) = next(iter(self._ids.items()))
            if expires >= now:
                break
            del self._ids[webhook_id]
