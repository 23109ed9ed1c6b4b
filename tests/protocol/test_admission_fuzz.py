"""Admission is total: arbitrary and mutated bytes, signed or not, give an Envelope or a Refusal.

50,000 Hypothesis examples across the strategies below, then 10,000 generated valid envelopes
(half signed) that must all be admitted. The counts by refusal reason are printed at the end (`pytest -s`).
"""

from __future__ import annotations

import collections
import json
import random
import re
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentqueue.protocol import (
    AgentRequest,
    Cancel,
    Envelope,
    Message,
    ResultEvent,
    TextContent,
    ToolCall,
    ToolResult,
    TraceContext,
    encode,
    user_message,
)
from agentqueue.protocol.admission import INTERNAL, Refusal, admit
from agentqueue.protocol.signing import KeyRing

KEYS = KeyRing([("k2", b"current-secret-0123456789"), ("k1", b"previous-secret-0123456789")])
OTHER = KeyRing([("k2", b"an-attackers-guess-of-the-key")])
NOW = 1_700_000_000.0

counts: collections.Counter[str] = collections.Counter()
examples = collections.Counter[str]()


def fuzz(n: int):  # type: ignore[no-untyped-def]
    return settings(
        max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )


_DETAIL = re.compile(r"""(\d+|'[^']*'|"[^"]*"|`[^`]*`)""")
KINDS = [
    "unsigned envelope refused",
    "bad signature for key id",
    "envelope signed with unknown key id",
    "stale envelope refused",
    "not a JSON envelope",
    "envelope protocol version",
]


def kind(reason: str) -> str:
    """A refusal reason without the values in it, to count reasons by kind."""
    for known in KINDS:
        if reason.startswith(known):
            return known
    if reason.startswith("invalid envelope: "):
        return "invalid envelope: " + _DETAIL.sub("…", reason[18:].split(" - at ")[0])[:60]
    return _DETAIL.sub("…", reason)[:80]


def check(
    data: bytes, keys: KeyRing | None, strategy: str, *, again: bool = False
) -> Envelope | Refusal:
    """The property: admission returns an Envelope or a Refusal with a reason, never raises.

    Counts one example of `strategy`, unless `again` (a second look at the same example)."""
    if not again:
        examples[strategy] += 1
    verdict = admit(data, keys, now=NOW)
    if isinstance(verdict, Refusal):
        assert verdict.reason
        assert not verdict.reason.startswith(INTERNAL), verdict.reason  # no check was caught out
        counts[kind(verdict.reason)] += 1
    else:
        assert isinstance(verdict, Envelope)
        counts["(admitted)"] += 1
    return verdict


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nadmission fuzz: {sum(examples.values())} examples {dict(examples)}")
    print(f"admission calls by outcome ({sum(counts.values())}):")
    for reason, n in counts.most_common():
        print(f"{n:>8}  {reason}")


VALID = [
    encode(
        Envelope(
            id="e1",
            session_id="s1",
            reply_to="aq-reply-c",
            body=AgentRequest(input=[user_message("hello")]),
            created_at=NOW,
            deadline=NOW + 60,
        )
    ),
    encode(
        Envelope(
            id="e2",
            session_id="s2",
            correlation_id="c2",
            reply_to="aq-reply-c",
            body=ToolCall(name="t", arguments={"a": [1, {"b": None}], "é": "ü"}, timeout=2.0),
            created_at=NOW - 10,
        )
    ),
    encode(
        Envelope(
            id="e3",
            session_id="s3",
            body=ResultEvent(request_id="r", kind="final", text="done"),
            created_at=NOW,
        )
    ),
]
SIGNED = [KEYS.sign(v) for v in VALID]


# Each example is one drawn byte string, read as the parameters of its mutation: drawing one
# value costs Hypothesis far less than drawing several, and it still shrinks the bytes.


@fuzz(14_000)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_admitted_or_refused_never_raise(data: bytes) -> None:
    check(data, None, "random bytes")
    check(data, KEYS, "random bytes", again=True)  # and as a signing worker sees them


def mutate(valid: bytes, p: bytes) -> bytes:
    """`valid` overwritten, inserted into, cut or bit-flipped where `p` says, with `p`'s junk."""
    at = int.from_bytes(p[1:3], "big") % len(valid)
    junk = p[4:] or b"\x00"
    how = p[3] % 4
    if how == 0:
        return valid[:at] + junk + valid[at + len(junk) :]
    if how == 1:
        return valid[:at] + junk + valid[at:]
    if how == 2:
        return valid[:at]
    return valid[:at] + bytes([valid[at] ^ (junk[0] or 1)]) + valid[at + 1 :]


@fuzz(14_000)
@given(st.binary(min_size=5, max_size=12))
def test_mutated_signed_envelopes_are_refused_never_raise(p: bytes) -> None:
    valid = SIGNED[p[0] % len(SIGNED)]
    data = mutate(valid, p)
    verdict = check(data, KEYS, "mutated signed")
    if data != valid:
        assert isinstance(verdict, Refusal)  # any change to signed bytes is caught


@fuzz(10_000)
@given(st.binary(min_size=5, max_size=12))
def test_mutated_unsigned_envelopes_are_admitted_or_refused_never_raise(p: bytes) -> None:
    check(mutate(VALID[p[0] % len(VALID)], p), None, "mutated unsigned")


ODD_MEMBERS = [b"k2:", b"k1:" + b"a" * 64, b"\xff:\xfe", "k2:é".encode(), b":", b"k2:\\u00e9"]


@fuzz(6_000)
@given(st.binary(min_size=1, max_size=70))
def test_odd_signature_members_are_refused_never_raise(p: bytes) -> None:
    # The finding's shape: `"sig":"k2:é"` once made hmac.compare_digest raise TypeError.
    member = ODD_MEMBERS[p[0] % len(ODD_MEMBERS)] + p[1:] if p[0] < 128 else p[1:]
    valid = VALID[p[0] % len(VALID)]
    verdict = check(valid[:-1] + b',"sig":"' + member + b'"}', KEYS, "odd signature")
    assert isinstance(verdict, Refusal)


FIELDS = ["v", "id", "session_id", "body", "created_at", "deadline", "attempt", "sig", "trace"]
VALUES: list[object] = [
    None, True, False, 0, -1, 2**63, 2**70, 1e308, -0.0, float("inf"), float("nan"), 1.5,
    "", "x", "é\u2028", "tool_call", "agent_request", "result", "cancel",
    {}, [], [1, "a"], {"type": "x"}, {"type": "tool_call"}, {"type": "tool_call", "name": 1},
    {"type": "result", "request_id": "r", "kind": "new-kind"}, {"traceparent": None},
]  # fmt: skip
DICTS = [json.loads(v) for v in VALID]


@fuzz(8_000)
@given(st.binary(min_size=2, max_size=16))
def test_signed_garbage_passes_the_signature_and_is_still_refused_or_admitted(p: bytes) -> None:
    # Signed by a key holder (or a forger), so the checks after the signature are reached.
    fields = dict(DICTS[p[0] % len(DICTS)])
    for i in range(1, len(p) - 1, 2):
        name = FIELDS[p[i] % len(FIELDS)]
        fields[name] = VALUES[p[i + 1] % len(VALUES)] if p[i + 1] < 200 else p[i:].hex()
    data = json.dumps(fields, allow_nan=True).encode()
    check((KEYS if p[0] < 200 else OTHER).sign(data), KEYS, "signed garbage")


# --- the valid corpus: 10,000 generated envelopes, every one admitted ---------------------------

CORPUS = 10_000
# Text from every corner that trips encoders: quotes, escapes, controls, accents, astral planes.
ALPHABET = 'ab Z09"\\/\b\f\n\r\t\x00\x1f\x7fé中\u2028\ufeff\U0001f600'


def generated(rng: random.Random) -> Envelope:
    """One random valid envelope (any body type, optional fields on or off)."""

    def text(n: int = 12) -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))

    def ident() -> str:
        return text() or "i"

    def maybe(value: object) -> object:
        return value if rng.random() < 0.5 else None

    def queue_name() -> str:  # what a reply queue may be called: ASCII letters, digits, -_.:
        tail = "".join(rng.choice("abcXYZ019-_.:") for _ in range(rng.randint(0, 30)))
        return rng.choice("aZ0") + tail

    def value(depth: int = 0) -> object:
        pick = rng.randint(0, 7 if depth < 2 else 4)
        if pick == 0:
            return None
        if pick == 1:
            return rng.random() < 0.5
        if pick == 2:
            return rng.randint(-(2**63), 2**63 - 1)
        if pick == 3:
            return rng.uniform(-1e300, 1e300)
        if pick == 4:
            return text()
        if pick in (5, 6):
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 3))}

    kind = rng.randint(0, 4)
    body: object
    if kind == 0:
        body = AgentRequest(
            input=[
                Message(
                    role=rng.choice(["user", "assistant", "system", "tool"]),
                    content=[TextContent(text=text(40)) for _ in range(rng.randint(0, 3))]
                    if rng.random() < 0.7
                    else text(40),
                )
                for _ in range(rng.randint(1, 3))
            ],
            agent=maybe(ident()),  # type: ignore[arg-type]
            stream=rng.random() < 0.5,
        )
    elif kind == 1:
        body = ToolCall(
            name=ident(),
            arguments={text(): value() for _ in range(rng.randint(0, 4))},
            call_id=maybe(ident()),  # type: ignore[arg-type]
            timeout=maybe(rng.uniform(0.001, 3600)),  # type: ignore[arg-type]
        )
    elif kind == 2:
        body = ToolResult(call_id=ident(), name=ident(), ok=rng.random() < 0.5, output=text(60))
    elif kind == 3:
        body = ResultEvent(
            request_id=ident(),
            kind=rng.choice(["delta", "final", "failed", "cancelled", "timed_out"]),
            seq=rng.randint(0, 10_000),
            text=text(60),
        )
    else:
        body = Cancel(request_id=ident(), reason=maybe(text()))  # type: ignore[arg-type]
    return Envelope(
        id=ident(),
        session_id=text(),
        body=body,  # type: ignore[arg-type]
        key=maybe(text()),  # type: ignore[arg-type]
        correlation_id=maybe(ident()),  # type: ignore[arg-type]
        reply_to=maybe(queue_name()),  # type: ignore[arg-type]
        attempt=rng.randint(1, 100),
        created_at=NOW + rng.uniform(-299, 299),
        deadline=maybe(NOW + rng.uniform(0, 86_400)),  # type: ignore[arg-type]
        trace=maybe(TraceContext(traceparent=text(55))),  # type: ignore[arg-type]
        replay_of=maybe(ident()),  # type: ignore[arg-type]
    )


def test_ten_thousand_generated_valid_envelopes_are_all_admitted_signed_or_not() -> None:
    rng = random.Random(14)
    refused: list[str] = []
    for i in range(CORPUS):
        envelope = generated(rng)
        data = encode(envelope)
        signing = i % 2 == 0
        verdict = check(KEYS.sign(data) if signing else data, KEYS if signing else None, "valid")
        if not isinstance(verdict, Envelope) or msgspec.structs.replace(verdict, sig=None) != (
            envelope
        ):
            refused.append(f"{verdict!r} for {data!r}")
    assert refused == [], f"{len(refused)} of {CORPUS} refused, e.g. {refused[:3]}"
    assert examples["valid"] == CORPUS


def test_the_fuzz_ran_at_least_fifty_thousand_garbage_examples() -> None:
    garbage = sum(n for s, n in examples.items() if s != "valid")
    assert garbage >= 50_000, examples
