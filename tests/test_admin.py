"""`agentqueue status` and `dlq list|show|replay` on a live broker."""

from __future__ import annotations

import io
import time

import anyio
import pytest

from agentqueue import App, Client, RequestFailed
from agentqueue.admin import (
    dlq_list,
    dlq_purge,
    dlq_replay,
    dlq_show,
    print_status,
    replay_envelope,
)
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.replies import ReplyRouter
from agentqueue.broker.topology import Topology
from agentqueue.protocol import (
    DeadLetter,
    Envelope,
    ToolCall,
    ToolResult,
    encode,
    encode_dead_letter,
    new_id,
)
from agentqueue.protocol.admission import admit
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings


async def test_a_dead_letter_can_be_listed_shown_and_replayed_once_its_cause_is_fixed() -> None:
    outage = {"down": True}
    app = App("flaky")

    @app.tool("lookup")
    async def lookup(key: str) -> str:
        return f"value of {key}"

    @app.agent("flaky")
    def flaky(ctx):  # type: ignore[no-untyped-def]
        if outage["down"]:
            raise RuntimeError("vector store unreachable")
        return ctx.build_agent("You help.")

    url, topology = (
        f"memory://admin-{new_id()[:8]}",
        Topology(namespace="adm", partitions=2, tool_partitions=2),
    )
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        worker = Worker(
            app,
            broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(
                topology,
                max_attempts=2,
                retry_base_delay=0.01,
                balance=True,
                heartbeat_interval=0.2,
            ),
        )
        await tg.start(worker.run)
        async with Client(broker, topology=topology) as client:
            handle = await client.submit("My name is Ada.", session_id="s1", timeout=30)
            try:
                await handle.final()
                raise AssertionError("the request should have failed")
            except RequestFailed as exc:
                assert str(exc) == "failed after 2 attempts: RuntimeError: vector store unreachable"

            listing = io.StringIO()
            assert await dlq_list(broker, topology, listing) == 1
            assert handle.id in listing.getvalue()
            assert (
                "failed after 2 attempts: RuntimeError: vector store unreachable"
                in listing.getvalue()
            )
            shown = io.StringIO()
            assert await dlq_show(broker, topology, handle.id, shown)
            assert '"text": "My name is Ada."' in shown.getvalue()

            status = io.StringIO()
            await print_status(broker, topology, status)
            assert "adm-requests-0" in status.getvalue() and worker.worker_id in status.getvalue()
            assert "dead letters in adm-dead-letters: 1" in status.getvalue()

            outage["down"] = False
            inbox = client.router.expect(handle.id)  # the replayed request answers the same caller
            assert len(await dlq_replay(broker, topology, handle.id, io.StringIO())) == 1
            with anyio.fail_after(20):
                while True:
                    reply = await inbox.get()
                    if reply.body.terminal:
                        break
            assert reply.body.kind == "final" and reply.body.text.startswith(
                "Nice to meet you, Ada"
            )
            assert await dlq_list(broker, topology, io.StringIO()) == 0
        worker.stop()


@pytest.mark.broker
async def test_a_poison_request_on_rabbitmq_is_dead_lettered_with_its_error_and_the_caller_gets_the_text(
    rabbitmq_url: str,
) -> None:
    app = App("poison")

    @app.agent("broken")
    def broken(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("model endpoint refused the key")

    topology = Topology(namespace=f"poi{new_id()[:6]}", partitions=2, tool_partitions=2)
    async with Client(rabbitmq_url, topology=topology) as client, anyio.create_task_group() as tg:
        worker = Worker(
            app,
            client.broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(topology, max_attempts=3, retry_base_delay=0.01),
        )
        await tg.start(worker.run)
        handle = await client.submit("hello", session_id="s1", timeout=30)
        try:
            await handle.final()
            raise AssertionError("the request should have failed")
        except RequestFailed as exc:
            assert (
                str(exc) == "failed after 3 attempts: RuntimeError: model endpoint refused the key"
            )
        listing = io.StringIO()
        assert await dlq_list(client.broker, topology, listing) == 1
        assert f"{handle.id}" in listing.getvalue()
        assert (
            "failed after 3 attempts: RuntimeError: model endpoint refused the key"
            in listing.getvalue()
        )
        worker.stop()


# --- dead letters that are garbage, and replays under signing -----------------------------------

KEYS = KeyRing([("k2", b"current-secret-0123456789"), ("k1", b"previous-secret-0123456789")])
ran: list[str] = []
signed_app = App("signed-admin")


@signed_app.tool("transfer")
async def transfer(account: str) -> str:
    """Move money (test tool)."""
    ran.append(account)
    return f"moved from {account}"


def transfer_call(account: str, *, created_at: float, reply_to: str | None = None) -> Envelope:
    call_id = new_id()
    return Envelope(
        id=call_id,
        session_id=account,
        correlation_id=call_id,
        reply_to=reply_to,
        body=ToolCall(name="transfer", arguments={"account": account}, call_id=call_id),
        created_at=created_at,
        deadline=created_at + 60,
    )


async def test_records_with_invalid_utf8_are_listed_shown_and_kept_not_crashed_on_or_lost() -> None:
    topology = Topology(namespace="dlu", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://dlq-{new_id()[:8]}") as broker:
        await broker.declare(topology)
        dlq = topology.dead_letter_queue
        # The finding: a record with invalid UTF-8 made list/show/replay crash, and on the memory
        # broker the records taken so far were never given back.
        good = DeadLetter(
            reason="failed after 3 attempts: x", queue="dlu-tools-0", payload=b"{}", failed_at=1.0
        )
        await broker.publish(dlq, encode_dead_letter(good), sign=False)
        await broker.publish(dlq, b'{"reason":"bad \xff","queue":"q","payload":"","failed_at":1}')
        bad_payload = DeadLetter(
            reason="not a JSON envelope", queue="dlu-tools-0", payload=b"\xff\xfe{", failed_at=2.0
        )
        await broker.publish(dlq, encode_dead_letter(bad_payload), sign=False)
        for _ in range(2):
            listing = io.StringIO()
            assert await dlq_list(broker, topology, listing) == 3
            assert "dead-lettered by the broker" in listing.getvalue()
        shown = io.StringIO()
        assert await dlq_show(broker, topology, "2", shown)
        assert "payload (3 bytes, not an envelope): b'\\xff\\xfe{'" in shown.getvalue()
        replayed = io.StringIO()
        assert len(await dlq_replay(broker, topology, None, replayed)) == 0
        missing_id = "not replayed (no id): invalid envelope: Object missing required field `id`"
        assert replayed.getvalue().splitlines() == [
            missing_id,  # the good record's payload, `{}`
            missing_id,  # the raw bytes the broker would have dead-lettered by itself
            "not replayed (no id): not a JSON envelope: JSON is malformed: invalid character"
            " (byte 0)",
        ]
        assert (await broker.stats(dlq)).ready == 3  # every record is still there


async def test_dlq_replay_under_signing_sends_a_new_signed_envelope_that_runs_once() -> None:
    ran.clear()
    topology = Topology(namespace="dlr", partitions=1, tool_partitions=1)
    async with (
        MemoryBroker(f"memory://dlq-{new_id()[:8]}") as broker,
        anyio.create_task_group() as tg,
    ):
        broker.signing = KEYS
        worker = Worker(
            signed_app,
            broker,
            MemorySessionStore(f"memory://{new_id()[:8]}"),
            worker_settings(topology),
        )
        await tg.start(worker.run)
        replies = topology.reply_queue("dlr")
        await broker.declare_reply_queue(replies)
        router = ReplyRouter(broker, replies)
        await tg.start(router.run)
        stale = transfer_call("acct-1", created_at=time.time() - 3600, reply_to=replies)
        await broker.publish(topology.route(stale), encode(stale))  # signed, but an hour old
        with anyio.fail_after(20):
            while (await broker.stats(topology.dead_letter_queue)).ready == 0:
                await anyio.sleep(0.02)
        # The finding: replayed bytes were refused again, as replays or as stale.
        inbox = router.expect(stale.id)  # the replay answers the original caller
        out = io.StringIO()
        assert len(await dlq_replay(broker, topology, stale.id, out)) == 1
        line = out.getvalue().strip()
        assert line.startswith(f"replayed {stale.id} to dlr-tools-0 as ")
        new_id_ = line.rsplit(" as ", 1)[1]
        assert new_id_ != stale.id and len(new_id_) == 32
        with anyio.fail_after(20):
            reply = await inbox.get()
        assert isinstance(reply.body, ToolResult) and reply.body.ok
        assert reply.body.output == "moved from acct-1"
        assert ran == ["acct-1"]
        assert (await broker.stats(topology.dead_letter_queue)).ready == 0
        worker.stop()
        tg.cancel_scope.cancel()


async def test_dlq_replay_does_not_re_sign_a_forged_payload() -> None:
    topology = Topology(namespace="dlf", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://dlq-{new_id()[:8]}") as broker:
        await broker.declare(topology)
        broker.signing = KEYS
        forger = KeyRing([("k2", b"an-attackers-guess-of-the-key")])
        forged = transfer_call("acct-2", created_at=time.time())
        record = DeadLetter(
            reason="bad signature",
            queue="dlf-tools-0",
            payload=forger.sign(encode(forged)),
            failed_at=1.0,
            envelope_id=forged.id,
        )
        await broker.publish(topology.dead_letter_queue, encode_dead_letter(record), sign=False)
        out = io.StringIO()
        assert len(await dlq_replay(broker, topology, forged.id, out)) == 0
        assert out.getvalue() == (
            f"not replayed {forged.id}: bad signature for key id 'k2': the envelope was altered"
            " or signed with another secret\n"
        )
        assert (await broker.stats(topology.dead_letter_queue)).ready == 1
        assert (await broker.stats("dlf-tools-0")).ready == 0


def test_a_replay_is_a_new_envelope_made_now_signed_anew_and_naming_the_original() -> None:
    original = transfer_call("acct-3", created_at=1_000.0)
    record = DeadLetter(
        reason="stale", queue="q", payload=KEYS.sign(encode(original)), failed_at=2_000.0
    )
    replay = replay_envelope(record, KEYS, now=5_000.0)
    assert isinstance(replay, Envelope)
    assert replay.id != original.id and replay.replay_of == original.id
    assert replay.correlation_id == original.id and replay.body == original.body
    assert (replay.created_at, replay.deadline, replay.sig) == (5_000.0, 5_060.0, None)
    admitted = admit(KEYS.sign(encode(replay)), KEYS, now=5_000.0)
    assert isinstance(admitted, Envelope) and admitted.replay_of == original.id


async def test_dlq_purge_deletes_the_named_dead_letter_for_good_and_keeps_the_others() -> None:
    topology = Topology(namespace="dlp", partitions=1, tool_partitions=1)
    async with MemoryBroker(f"memory://dlq-{new_id()[:8]}") as broker:
        await broker.declare(topology)
        for envelope_id in ("first", "second"):
            record = DeadLetter(
                reason=f"{envelope_id} failed", queue="dlp-requests-0", payload=b"{}",
                failed_at=1.0, envelope_id=envelope_id,
            )  # fmt: skip
            await broker.publish(topology.dead_letter_queue, encode_dead_letter(record), sign=False)
        said = io.StringIO()
        assert await dlq_purge(broker, topology, "second", said) == 1
        assert said.getvalue() == "purged second (second failed)\n"
        assert await dlq_purge(broker, topology, "nobody", io.StringIO()) == 0
        listing = io.StringIO()
        assert await dlq_list(broker, topology, listing) == 1
        assert " first " in listing.getvalue() and "second" not in listing.getvalue()


def test_dlq_purge_without_an_id_is_refused_before_anything_is_deleted(capsys) -> None:  # type: ignore[no-untyped-def]
    from agentqueue.cli import main

    assert main(["dlq", "purge", "--broker", "amqp://guest:guest@127.0.0.1:1/"]) == 1
    assert capsys.readouterr().err.strip() == (
        "agentqueue dlq: dlq purge deletes dead letters for good: name an envelope id or list"
        " index, or `all` to purge every one"
    )
