"""The Function Compute handler, given the payloads an MNS trigger sends, on a local MNS server."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mns.mns_exception import MNSServerException
from mns.queue import QueueMeta

from agentqueue.broker.base import read_dead_letter
from agentqueue.broker.mns_body import from_wire, to_wire
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import Envelope, ToolCall, ToolResult, decode, encode
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers import fc
from agentqueue.workers.fc_events import cloud_event
from agentqueue.workers.session_store import DEFAULT_RETENTION, Expired
from agentqueue.workers.sqlite_store import SQLiteSessionStore

pytestmark = pytest.mark.broker

EVENTS = Path(__file__).parent / "fc_events"
REPLIES = "fcx-reply-fixtures"  # the reply_to of every envelope in the recorded payloads
QUEUES = [
    "fcx-tools-0",
    "fcx-tools-1",
    "fcx-requests-0",
    "fcx-requests-1",
    "fcx-dead-letters",
    REPLIES,
]


def fresh_queues(mns: LocalMNS) -> None:
    account = mns.account()
    for name in QUEUES:
        queue = account.get_queue(name)
        try:
            queue.delete()
        except MNSServerException:
            pass
        queue.create(QueueMeta())


def drain(mns: LocalMNS, name: str) -> list[bytes]:
    queue = mns.account().get_queue(name)
    queue.set_encoding(False)
    bodies = []
    while True:
        try:
            messages = queue.batch_receive_message(16, 0)
        except MNSServerException:
            return bodies
        bodies += [from_wire(m.message_body) for m in messages]
        queue.batch_delete_message([m.receipt_handle for m in messages])


def replies(mns: LocalMNS) -> dict[str, Envelope]:
    return {(e := decode(b)).correlation_id or "": e for b in drain(mns, REPLIES)}


@pytest.fixture
def effects(
    local_mns: LocalMNS, mns_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The function's environment (a fresh store and queues); yields the file tools log to."""
    fresh_queues(local_mns)
    log = tmp_path / "effects.log"
    for name, value in {
        "APP": "tests.apps.fc_tools:app",
        "BROKER": mns_url,
        "STORE": f"sqlite:///{tmp_path}/sessions.db",
        "NAMESPACE": "fcx",
        "PARTITIONS": "2",
        "TOOL_PARTITIONS": "2",
        "TEST_LOG": str(log),
    }.items():
        monkeypatch.setenv(f"AGENTQUEUE_{name}", value)
    yield log
    fc.shutdown()


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("sample", ["streaming_plain", "streaming_base64"])
def test_every_message_of_a_streaming_batch_is_handled_plain_or_base64(
    sample: str, effects: Path, local_mns: LocalMNS
) -> None:
    payload = (EVENTS / f"{sample}.json").read_bytes()
    sent = json.loads(payload)
    result = json.loads(fc.handler(payload, None))
    assert result["handled"] == len(sent) and result["failed"] == 0
    got = replies(local_mns)
    assert len(got) == len(sent)
    assert all(isinstance(e.body, ToolResult) and e.body.ok for e in got.values())
    steps = [line.split()[:2] for line in lines(effects)]
    for session in ("alpha", "beta"):  # one session's events ran in batch order
        seqs = [int(seq) for s, seq in steps if s == session]
        assert seqs == sorted(seqs) and seqs


def test_an_event_driven_single_cloud_event_is_handled(effects: Path, local_mns: LocalMNS) -> None:
    result = json.loads(fc.handler((EVENTS / "event_driven.json").read_bytes(), None))
    assert result["handled"] == 1
    (reply,) = replies(local_mns).values()
    assert reply.body.output == "delta:200"  # type: ignore[union-attr]


def test_raw_data_events_without_the_cloud_event_wrapper_are_handled(
    effects: Path, local_mns: LocalMNS
) -> None:
    result = json.loads(fc.handler((EVENTS / "rawdata_streaming.json").read_text(), None))
    assert result["handled"] == 3
    assert sorted(replies(local_mns)) == ["evt-0300", "evt-0301", "evt-0302"]


def test_a_retried_batch_is_answered_from_the_store_not_run_again(
    effects: Path, local_mns: LocalMNS
) -> None:
    payload = (EVENTS / "streaming_plain.json").read_bytes()
    fc.handler(payload, None)
    first = lines(effects)
    fc.handler(payload, None)  # the trigger retries a batch whose invocation it thought failed
    assert lines(effects) == first
    assert len(replies(local_mns)) == len(json.loads(payload))


def test_an_undecodable_message_is_dead_lettered_and_the_rest_of_the_batch_is_handled(
    effects: Path, local_mns: LocalMNS
) -> None:
    events = json.loads((EVENTS / "streaming_plain.json").read_text())
    events[1]["data"]["messageBody"] = (
        '{"id": "broken", "session_id": "s", "body": {"type": "nope"}}'
    )
    result = json.loads(fc.handler(json.dumps(events).encode(), None))
    assert result == {"handled": 5, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    (dead,) = drain(local_mns, "fcx-dead-letters")
    record = read_dead_letter(dead, "fcx-dead-letters")
    assert record.queue == "fcx-tools-1" and record.envelope_id == "broken"
    assert "$.body" in record.reason


def test_a_payload_that_is_not_a_trigger_batch_is_refused_naming_what_is_missing(
    effects: Path,
) -> None:
    with pytest.raises(ValueError, match="messageBody"):
        fc.handler(b'[{"specversion": "1.0", "data": {"body": "x"}}]', None)


def test_a_tool_event_does_not_import_agentscope(effects: Path) -> None:
    code = (
        "import sys; from agentqueue.workers import fc; "
        f"fc.handler(open({str(EVENTS / 'event_driven.json')!r}, 'rb').read(), None); "
        "print('agentscope' in sys.modules); fc.shutdown()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_attempt_counts_of_1000_idempotent_tool_calls_are_gone_after_a_ttl_pass(
    effects: Path, local_mns: LocalMNS, tmp_path: Path
) -> None:
    def message(n: int) -> dict[str, str]:
        envelope = Envelope(
            id=f"ping-{n:04d}",
            session_id=f"s{n % 7}",
            correlation_id=f"ping-{n:04d}",
            reply_to=REPLIES,
            body=ToolCall("ping", {"n": n}, call_id=f"ping-{n:04d}"),
            created_at=time.time(),
        )
        return {
            "requestId": f"r{n}",
            "messageId": f"m{n}",
            "messageBody": encode(envelope).decode(),
        }

    for start in range(0, 1000, 100):
        payload = json.dumps([message(n) for n in range(start, start + 100)])
        assert json.loads(fc.handler(payload, None))["handled"] == 100
    fc.shutdown()
    database = tmp_path / "sessions.db"
    with sqlite3.connect(database) as db:  # an idempotent call is never committed: no handled row
        assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 1000
        assert db.execute("SELECT COUNT(*) FROM handled").fetchone()[0] == 0

    async def ttl_pass() -> Expired:
        store = SQLiteSessionStore(f"sqlite:///{database}")
        try:  # the pass as it runs once the default retention has gone by
            return await store.expire(time.time() + DEFAULT_RETENTION + 1)
        finally:
            await store.close()

    assert anyio.run(ttl_pass) == Expired(handled=0, attempts=1000, sessions=0)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0


# --- admission on FC: signatures, replays, garbage ----------------------------------------------

SIGNING_KEYS = "k2:current-secret-0123456789,k1:previous-secret-0123456789"


def record_call(event_id: str, seq: int, *, created_at: float | None = None) -> bytes:
    return encode(
        Envelope(
            id=event_id,
            session_id="alpha",
            correlation_id=event_id,
            reply_to=REPLIES,
            body=ToolCall(name="record", arguments={"session": "alpha", "seq": seq}),
            created_at=time.time() if created_at is None else created_at,
        )
    )


def batch(*messages: tuple[str, bytes]) -> bytes:
    return json.dumps(
        [cloud_event("fcx-tools-0", mid, to_wire(body)) for mid, body in messages]
    ).encode()


def test_with_signing_keys_an_unsigned_tool_call_on_fc_is_dead_lettered_and_never_runs(
    effects: Path, local_mns: LocalMNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTQUEUE_SIGNING_KEYS", SIGNING_KEYS)
    keys = KeyRing.parse(SIGNING_KEYS)
    # The finding: the FC entrypoint decoded without admission, so this ran.
    unsigned = record_call("unsigned-1", 1, created_at=0.0)
    signed = keys.sign(record_call("signed-2", 2))
    result = json.loads(fc.handler(batch(("MSG-1", unsigned), ("MSG-2", signed)), None))
    assert result == {"handled": 1, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    (dead,) = drain(local_mns, "fcx-dead-letters")
    record = read_dead_letter(dead, "fcx-dead-letters")
    assert record.reason == (
        "unsigned envelope refused: this worker runs only envelopes signed with one of its keys"
        " (k2, k1)"
    )
    assert record.envelope_id == "unsigned-1"
    assert [line.split()[:2] for line in lines(effects)] == [["alpha", "2"]]
    assert sorted(replies(local_mns)) == ["signed-2"]  # the unsigned sender is not answered


def test_on_fc_a_trigger_retry_is_answered_and_a_copy_published_again_is_a_replay(
    effects: Path, local_mns: LocalMNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTQUEUE_SIGNING_KEYS", SIGNING_KEYS)
    signed = KeyRing.parse(SIGNING_KEYS).sign(record_call("signed-3", 3))
    assert json.loads(fc.handler(batch(("MSG-3", signed)), None))["handled"] == 1
    retried = json.loads(fc.handler(batch(("MSG-3", signed)), None))  # same MNS message id
    assert retried["handled"] == 1
    again = json.loads(fc.handler(batch(("MSG-4", signed)), None))  # published again
    assert again == {"handled": 0, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    (dead,) = drain(local_mns, "fcx-dead-letters")
    assert read_dead_letter(dead, "fcx-dead-letters").reason == (
        "replayed envelope refused: signed-3 with this signature was already received"
    )
    assert len(lines(effects)) == 1  # it ran once


def test_on_fc_invalid_utf8_in_a_field_is_dead_lettered_and_the_batch_still_returns(
    effects: Path, local_mns: LocalMNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTQUEUE_SIGNING_KEYS", raising=False)
    # The finding: addressing() raised on it, so the message vanished or the batch raised.
    garbage = (
        b'{"id":"utf8-1","session_id":"\xffalpha","reply_to":"%s","body":{"type":"tool_call",'
        b'"name":"record","arguments":{"session":"alpha","seq":9}}}' % REPLIES.encode()
    )
    result = json.loads(
        fc.handler(batch(("MSG-5", garbage), ("MSG-6", record_call("ok-4", 4))), None)
    )
    assert result == {"handled": 1, "dead_lettered": 1, "handed_back": 0, "failed": 0}
    (dead,) = drain(local_mns, "fcx-dead-letters")
    record = read_dead_letter(dead, "fcx-dead-letters")
    assert record.payload == garbage and record.envelope_id == "utf8-1"
    assert record.reason == (
        "not a JSON envelope: 'utf-8' codec can't decode byte 0xff in position 0:"
        " invalid start byte"
    )
    got = replies(local_mns)
    assert sorted(got) == ["ok-4", "utf8-1"]  # the caller is told why (unsigned mode)
    assert got["utf8-1"].body.error == record.reason  # type: ignore[union-attr]
    assert [line.split()[:2] for line in lines(effects)] == [["alpha", "4"]]


def test_an_event_whose_reply_cannot_reach_mns_is_left_for_the_retry_with_one_log_line(
    effects: Path, local_mns: LocalMNS, caplog: pytest.LogCaptureFixture
) -> None:
    fc.handler((EVENTS / "rawdata_streaming.json").read_text(), None)  # a warm instance
    caplog.clear()
    payload = (EVENTS / "event_driven.json").read_bytes()
    local_mns.stop()  # MNS restarting: the tool runs, its reply cannot be sent
    try:
        with pytest.raises(fc.BatchNotDone, match="evt-0200: BrokerConnectionError: MNS at"):
            fc.handler(payload, None)  # the invocation fails: the trigger retries the batch
    finally:
        local_mns.start()
    lines_ = [r for r in caplog.records if r.name == "agentqueue.fc"]
    assert [r.levelname for r in lines_] == ["WARNING"]
    assert lines_[0].getMessage().startswith("event evt-0200 left for the trigger's retry: MNS at")
    assert lines_[0].exc_info is None
