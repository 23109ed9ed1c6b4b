"""With a key ring, workers run only fresh, correctly signed, never-seen envelopes."""

from __future__ import annotations

import time

import anyio
import pytest

from agentqueue import App, Client, RequestFailed
from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.protocol import Envelope, ToolCall, decode_dead_letter, encode, new_id
from agentqueue.protocol.signing import KeyRing
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

CURRENT = ("k2", b"current-secret-0123456789")
PREVIOUS = ("k1", b"previous-secret-0123456789")
WORKER_KEYS = KeyRing([CURRENT, PREVIOUS])

runs: list[str] = []
app = App("signed")


@app.tool("transfer")
async def transfer(account: str, amount: int) -> str:
    """Move money (test tool)."""
    runs.append(account)
    return f"moved {amount} from {account}"


def call(account: str, *, created_at: float | None = None) -> bytes:
    call_id = new_id()
    return encode(
        Envelope(
            id=call_id,
            session_id=account,
            correlation_id=call_id,
            body=ToolCall(
                name="transfer", arguments={"account": account, "amount": 5}, call_id=call_id
            ),
            created_at=time.time() if created_at is None else created_at,
        )
    )


async def refusals(publish: list[bytes], expected: int | None = None) -> list[str]:
    """Publish raw messages to a signing worker and return the dead-letter reasons, in order."""
    url, topology = (
        f"memory://sig-{new_id()[:8]}",
        Topology(namespace="sig", partitions=1, tool_partitions=1),
    )
    reasons: list[str] = []
    async with MemoryBroker(url) as broker, anyio.create_task_group() as tg:
        broker.signing = WORKER_KEYS
        await tg.start(
            Worker(
                app,
                broker,
                MemorySessionStore(f"memory://{new_id()[:8]}"),
                worker_settings(topology),
            ).run
        )
        for data in publish:
            await broker.publish(topology.queue("tools", 0), data, sign=False)
        with anyio.fail_after(10):
            while len(reasons) < (len(publish) if expected is None else expected):
                dead = await broker.get(topology.dead_letter_queue)
                if dead is None:
                    await anyio.sleep(0.02)
                    continue
                reasons.append(decode_dead_letter(dead.body).reason)
                await dead.ack()
        tg.cancel_scope.cancel()
    return reasons


async def test_unsigned_forged_and_unknown_key_envelopes_are_dead_lettered_and_never_run() -> None:
    runs.clear()
    forged = KeyRing([("k2", b"an-attackers-guess-of-the-key")]).sign(call("acct-2"))
    unknown = KeyRing([("k9", b"some-other-deployment-key")]).sign(call("acct-3"))
    reasons = await refusals([call("acct-1"), forged, unknown])
    assert reasons == [
        "unsigned envelope refused: this worker runs only envelopes signed with one of its keys (k2, k1)",
        "bad signature for key id 'k2': the envelope was altered or signed with another secret",
        "envelope signed with unknown key id 'k9' (this worker accepts k2, k1)",
    ]
    assert runs == []


async def test_a_replayed_or_stale_envelope_is_dead_lettered_and_never_run() -> None:
    runs.clear()
    original = WORKER_KEYS.sign(call("acct-4"))
    stale = WORKER_KEYS.sign(call("acct-5", created_at=time.time() - 3600))
    tampered = original.replace(b'"amount":5', b'"amount":500')
    reasons = await refusals([original, original, stale, tampered], expected=3)
    assert runs == ["acct-4"]  # the original ran once; nothing else did
    assert len(reasons) == 3
    assert reasons[0].startswith("replayed envelope refused: ")
    assert reasons[1].startswith(
        "stale envelope refused: created 3600 s ago, outside the 300 s window"
    )
    assert (
        reasons[2]
        == "bad signature for key id 'k2': the envelope was altered or signed with another secret"
    )


async def test_a_client_signing_with_the_previous_key_is_still_served_during_rotation() -> None:
    runs.clear()
    url, topology = (
        f"memory://rot-{new_id()[:8]}",
        Topology(namespace="rot", partitions=1, tool_partitions=1),
    )
    async with MemoryBroker(url) as worker_broker, anyio.create_task_group() as tg:
        worker_broker.signing = WORKER_KEYS
        await tg.start(
            Worker(
                app,
                worker_broker,
                MemorySessionStore(f"memory://{new_id()[:8]}"),
                worker_settings(topology),
            ).run
        )
        client_broker = MemoryBroker(url)
        # Mid-rotation: the client still signs with the previous key and already accepts the
        # current one, which the worker signs its replies with (replies are verified too).
        client_broker.signing = KeyRing([PREVIOUS, CURRENT])
        await client_broker.connect()
        async with Client(client_broker, topology=topology) as client:
            assert (
                await client.call_tool("transfer", {"account": "acct-6", "amount": 7}, timeout=10)
                == "moved 7 from acct-6"
            )
            with pytest.raises(RequestFailed, match="bad arguments for tool 'transfer'"):
                await client.call_tool(
                    "transfer", {"account": "acct-7", "amount": "lots"}, timeout=10
                )
            with pytest.raises(
                RequestFailed, match="tool 'rm_rf' is not registered on this worker"
            ):
                await client.call_tool("rm_rf", {"path": "/"}, timeout=10)
        await client_broker.close()
        tg.cancel_scope.cancel()
    assert runs == ["acct-6"]
