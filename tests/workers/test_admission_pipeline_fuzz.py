"""Admission through running consumers: garbage and mutated envelopes, signed and unsigned, sent
to a worker on the embedded broker and to the FC handler. Nothing raises but refusals, the
worker never dies, nothing is left unacked, and a valid message sent after the garbage is
served. The counts by refusal reason are printed (`pytest -s`)."""

from __future__ import annotations

import collections
import json
import re
import time
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentqueue import App, Client
from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.mns_body import to_wire
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import (
    AgentRequest,
    Cancel,
    Envelope,
    ToolCall,
    ToolResult,
    decode_dead_letter,
    encode,
    new_id,
    user_message,
)
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers import fc
from agentqueue.workers.errors import PermanentError, UnknownHandler
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings
from tests.workers.test_delivery import background
from tests.workers.test_fc_handler import REPLIES, drain, effects, lines  # noqa: F401

KEY_SPEC = "k2:current-secret-0123456789,k1:previous-secret-0123456789"
KEYS = KeyRing.parse(KEY_SPEC)
TOPOLOGY = Topology(namespace="afz", partitions=1, tool_partitions=1)
BATCHES = 600  # per run: each a list of 10 to 40 messages
_DETAIL = re.compile(r"""([0-9a-f]{8,}|\d+(\.\d+)?|'[^']*'|"[^"]*"|`[^`]*`)""")


def _bases(reply_to: str) -> list[Envelope]:
    now = time.time()

    def envelope(body, **fields) -> Envelope:  # type: ignore[no-untyped-def]
        event_id = new_id()
        return Envelope(
            id=event_id,
            session_id=fields.pop("session", "fuzz"),
            correlation_id=event_id,
            reply_to=reply_to,
            body=body,
            created_at=now,
            **fields,
        )

    return [
        envelope(ToolCall(name="echo", arguments={"text": "héllo"}, call_id="c1")),
        envelope(ToolCall(name="echo", arguments={"text": "x" * 40}), deadline=now + 60),
        envelope(ToolCall(name="nope", arguments={})),
        envelope(AgentRequest(input=[user_message("hi")])),
        envelope(Cancel(request_id="someone-else")),
        envelope(ToolResult(call_id="c1", name="echo", ok=True, output="forged")),
    ]


_SPOILERS = [b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"\\", b"[" * 64, b"\x00", "é".encode()]


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    n = len(base)
    at = st.integers(0, n - 1)
    return st.one_of(
        st.just(base),  # valid (a replay, once signed and sent twice)
        st.binary(max_size=200),
        at.map(lambda i: base[:i]),  # truncated
        st.tuples(at, st.binary(min_size=1, max_size=3)).map(
            lambda t: base[: t[0]] + t[1] + base[t[0] + len(t[1]) :]
        ),
        st.tuples(at, st.sampled_from(_SPOILERS)).map(lambda t: base[: t[0]] + t[1] + base[t[0] :]),
        st.just(base[:-2] + ',"sig":"k2:é"}'.encode()),
    )


def corpus(bases: list[bytes], batches: int) -> list[list[bytes]]:
    """Hypothesis-generated batches of mutated messages (generated first, then sent)."""
    generated: list[list[bytes]] = []
    strategy = st.lists(st.one_of(*(_mutations(b) for b in bases)), min_size=10, max_size=40)

    @settings(
        max_examples=batches, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(strategy)
    def collect(batch: list[bytes]) -> None:
        generated.append(batch)

    collect()
    return generated


def kind(reason: str) -> str:
    """The reason without its particulars (ids, bytes, positions), to count by."""
    text = _DETAIL.sub("…", reason)
    return text.split(" (byte")[0].split(" in position")[0][:80]


def report(title: str, reasons: collections.Counter[str], sent: int) -> None:
    kinds = collections.Counter[str]()
    for reason, count in reasons.items():
        kinds[kind(reason)] += count
    print(f"\n{title}: {sent} messages, {sum(reasons.values())} dead letters")
    for text, count in kinds.most_common(12):
        print(f"  {count:6d}  {text}")
    if len(kinds) > 12:
        print(f"  {sum(kinds.values()) - sum(c for _, c in kinds.most_common(12)):6d}  (other)")


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_garbage_through_a_running_worker_is_refused_and_the_worker_keeps_serving(
    signed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("fuzzed")
    runs = collections.Counter[str]()

    @app.tool("echo", idempotent=True)
    async def echo(text: str) -> str:
        runs[text] += 1
        return text

    reasons: collections.Counter[str] = collections.Counter()
    url = f"memory://afz-{new_id()[:8]}"
    settings_ = worker_settings(TOPOLOGY, reply_grace=0.05)
    async with MemoryBroker(url) as broker, background() as tg:
        broker.signing = KEYS if signed else None
        worker = Worker(app, broker, MemorySessionStore(url), settings_, role="tools")
        await tg.start(worker.run)
        replies = TOPOLOGY.reply_queue("fuzz")
        await broker.declare_reply_queue(replies)
        bases = [encode(e) for e in _bases(replies)]
        bases = [KEYS.sign(b) for b in bases] if signed else bases
        batches = corpus(bases, BATCHES)
        queue = TOPOLOGY.queue("tools", 0)
        async with Client(broker, topology=TOPOLOGY) as client:
            for i, batch in enumerate(batches):
                for data in batch:
                    await broker._publish(queue, data)  # as sent: never signed again
                # A valid call after the garbage is still served.
                answer = await client.call_tool("echo", {"text": f"after {i}"}, timeout=30)
                assert answer == f"after {i}"
                with anyio.fail_after(30):
                    while (stats := await broker.stats(queue)).ready + stats.unacked:
                        await anyio.sleep(0.005)
                while (dead := await broker.get(TOPOLOGY.dead_letter_queue)) is not None:
                    reasons[decode_dead_letter(dead.body).reason] += 1
                    await dead.ack()
                while (reply := await broker.get(replies)) is not None:
                    await reply.ack()
        assert worker.pipeline is not None and worker.pipeline.accepting  # still serving
    sent = sum(len(b) for b in batches)
    report(f"worker, {'signed' if signed else 'unsigned'}", reasons, sent)
    assert sent >= 10_000
    assert "could not be settled" not in caplog.text
    # The only tracebacks are those of events dead-lettered on purpose (an unknown tool).
    unexpected = [
        r.getMessage()
        for r in caplog.records
        if r.exc_info and not isinstance(r.exc_info[1], PermanentError | UnknownHandler)
    ]
    assert unexpected == []
    assert not any(r.startswith("admission could not check") for r in reasons)
    if signed:  # only the envelopes sent as they were signed ran; every altered one refused
        assert set(runs) <= {"héllo", "x" * 40} | {f"after {i}" for i in range(len(batches))}


def _payload(bodies: list[bytes]) -> bytes:
    return json.dumps(
        [
            {"requestId": new_id(), "messageId": new_id(), "messageBody": to_wire(body)}
            for body in bodies
        ]
    ).encode()


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_garbage_through_the_fc_handler_is_refused_and_the_next_batch_is_served(
    signed: bool,
    effects: Path,  # noqa: F811
    local_mns: LocalMNS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if signed:
        monkeypatch.setenv("AGENTQUEUE_SIGNING_KEYS", KEY_SPEC)
    monkeypatch.setenv("AGENTQUEUE_REPLY_GRACE", "0.05")
    bases = [encode(e) for e in _bases(REPLIES)]
    bases = [KEYS.sign(b) for b in bases] if signed else bases
    batches = corpus(bases, BATCHES // 3)
    reasons: collections.Counter[str] = collections.Counter()
    for i, batch in enumerate(batches):
        outcome = json.loads(fc.handler(_payload(batch), None))  # raises if anything failed
        assert outcome["failed"] == 0 and outcome["handed_back"] == 0
        assert outcome["handled"] + outcome["dead_lettered"] == len(batch)
        valid = Envelope(
            id=f"valid-{i}",
            session_id="fuzz-ok",
            correlation_id=f"valid-{i}",
            reply_to=REPLIES,
            body=ToolCall(name="record", arguments={"session": "ok", "seq": i}, call_id=f"v{i}"),
            created_at=time.time(),
        )
        data = KEYS.sign(encode(valid)) if signed else encode(valid)
        assert json.loads(fc.handler(_payload([data]), None))["handled"] == 1
        for dead in drain(local_mns, "fcx-dead-letters"):
            reasons[read_dead_letter(dead, "fcx-dead-letters").reason] += 1
        drain(local_mns, REPLIES)
    sent = sum(len(b) for b in batches)
    report(f"FC handler, {'signed' if signed else 'unsigned'}", reasons, sent)
    assert sent >= 3_000
    served = [line.split()[:2] for line in lines(effects) if line.startswith("ok ")]
    assert served == [["ok", str(i)] for i in range(len(batches))]
    assert not any(r.startswith("admission could not check") for r in reasons)
