"""amqps:// with a CA file works against a RabbitMQ node with a self-signed certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from agentqueue import App, Client
from agentqueue.broker.topology import Topology
from agentqueue.broker.urls import open_broker
from agentqueue.deploy.local.ports import free_port
from agentqueue.deploy.local.rabbitmq import LocalRabbitMQ
from agentqueue.errors import BrokerConnectionError
from agentqueue.protocol import new_id
from agentqueue.workers.session_store import MemorySessionStore
from agentqueue.workers.worker import Worker
from tests.config import worker_settings

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def make_certificates(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=agentqueue test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    return d / "ca.pem", d / "server.pem", d / "server.key"


async def test_amqps_with_the_ca_file_serves_calls_and_without_it_is_refused(
    tmp_path: Path,
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls_port = free_port()
    node = LocalRabbitMQ(
        tmp_path / "rabbit",
        extra_config="\n".join(
            [
                f"listeners.ssl.default = {tls_port}",
                f"ssl_options.cacertfile = {ca}",
                f"ssl_options.certfile = {cert}",
                f"ssl_options.keyfile = {key}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        ),
    ).start()
    try:
        url = f"amqps://guest:guest@127.0.0.1:{tls_port}/?cafile={ca}"
        topology = Topology(namespace=f"tls{new_id()[:6]}", partitions=2, tool_partitions=2)
        app = App("tls")

        @app.tool("ping", idempotent=True)
        async def ping() -> str:
            return "pong over TLS"

        async with open_broker(url) as broker, anyio.create_task_group() as tg:
            await tg.start(
                Worker(
                    app,
                    broker,
                    MemorySessionStore(f"memory://{new_id()[:8]}"),
                    worker_settings(topology),
                ).run
            )
            async with Client(url, topology=topology) as client:
                assert await client.call_tool("ping", timeout=30) == "pong over TLS"
            tg.cancel_scope.cancel()
        with pytest.raises(BrokerConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            async with open_broker(f"amqps://guest:guest@127.0.0.1:{tls_port}/"):
                pass
    finally:
        node.stop()
