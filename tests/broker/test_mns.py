"""What the MNS broker adds to the contract: size limit, body encoding, credentials, keep-alive."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from agentqueue.broker.errors import BrokerError, MessageTooLarge
from agentqueue.broker.mns import MNSBroker
from agentqueue.broker.mns_body import from_wire, to_wire
from agentqueue.broker.mns_config import load_credentials
from agentqueue.broker.topology import Topology
from agentqueue.deploy.local.mns import LocalMNS
from agentqueue.protocol import new_id

pytestmark = pytest.mark.broker


def test_json_goes_as_text_and_other_bytes_as_base64_and_both_come_back() -> None:
    envelope = '{"id":"e1","body":{"text":"héllo <b> & ✓"}}'.encode()
    assert to_wire(envelope) == envelope.decode()
    for raw in (b"\x00 not an envelope", b'{"bad": "\x01"}', b"\xff\xfe", b""):
        assert to_wire(raw)[:1] != "{"  # base64: XML cannot carry these bytes as text
        assert from_wire(to_wire(raw)) == raw
    assert from_wire(to_wire(envelope)) == envelope


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(BrokerError, match="ALIBABA_CLOUD_ACCESS_KEY_ID") as caught:
        MNSBroker("mns://key:s3cret@127.0.0.1:9")
    assert "s3cret" not in str(caught.value)


def test_credentials_come_from_a_json_or_ini_file(tmp_path: Path) -> None:
    json_file = tmp_path / "creds.json"
    json_file.write_text(json.dumps({"AccessKeyId": "id1", "AccessKeySecret": "sec1"}))
    assert (
        load_credentials({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(json_file)}).access_key_id == "id1"
    )
    ini_file = tmp_path / "credentials"
    ini_file.write_text(
        "[default]\naccess_key_id = id2\naccess_key_secret = sec2\nsecurity_token = tok\n"
    )
    creds = load_credentials({"ALIBABA_CLOUD_CREDENTIALS_FILE": str(ini_file)})
    assert (creds.access_key_id, creds.security_token) == ("id2", "tok")
    assert "sec2" not in repr(creds)
    with pytest.raises(BrokerError, match="ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        load_credentials({})


async def test_a_message_over_64_kb_is_refused_before_sending_naming_size_and_limit(
    mns_url: str,
) -> None:
    topology = Topology(f"z{new_id()[:6]}", partitions=1, tool_partitions=1)
    async with MNSBroker(mns_url) as broker:
        await broker.declare(topology)
        queue = topology.queue("requests", 0)
        await broker.publish(queue, b'{"x":"' + b"a" * 65000 + b'"}')  # fits as text
        with pytest.raises(MessageTooLarge, match=r"65544 bytes as text.*65536"):
            await broker.publish(queue, b'{"x":"' + b"a" * 65536 + b'"}')
        with pytest.raises(MessageTooLarge, match="after base64"):
            await broker.publish(queue, b"\x00" * 50000)
        assert (await broker.stats(queue)).ready == 1


async def test_a_delivery_held_past_its_visibility_timeout_is_kept_from_other_consumers(
    local_mns: LocalMNS, mns_url: str
) -> None:
    topology = Topology(f"v{new_id()[:6]}", partitions=1, tool_partitions=1)
    queue = topology.queue("requests", 0)
    async with MNSBroker(f"{mns_url}&visibility=3") as holder, MNSBroker(mns_url) as other:
        await holder.declare(topology)
        await holder.publish(queue, b'{"n":1}')
        async with await holder.consume(queue, prefetch=1) as sub:
            with anyio.fail_after(10):
                delivery = await sub.__anext__()
            async with await other.consume(
                queue, prefetch=1
            ) as rival:  # another process's consumer
                with anyio.move_on_after(5):  # longer than the 3 s visibility
                    stolen = await rival.__anext__()
                    pytest.fail(f"a held message was redelivered: {stolen.body!r}")
            await delivery.ack()
        stats = await holder.stats(queue)
        assert (stats.ready, stats.unacked) == (0, 0)
