"""The browsers' filtering proxy on its unix socket: CONNECT tunnels and the address rules."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentqueue.workers.errors import SandboxError
from agentqueue.workers.sandbox_proxy import FilteringProxy, NetworkPolicy


async def echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server, port = await echo_server()
    async with server:
        yield port


async def through(policy: NetworkPolicy, request: bytes) -> bytes:
    """Send `request` (and a line for the tunnel) to a proxy enforcing `policy`; all it says."""
    with tempfile.TemporaryDirectory(prefix="aq-proxy-test-") as directory:
        proxy = FilteringProxy(policy, Path(directory) / "proxy.sock")
        await proxy.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(proxy.path))
            writer.write(request + b"hello through the tunnel\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            await proxy.close()


async def test_a_connect_to_the_exact_listed_loopback_port_is_tunnelled(echo_port: int) -> None:
    policy = NetworkPolicy.parse([f"127.0.0.1:{echo_port}"])
    answer = await through(policy, f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\n\r\n".encode())
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\nhello through the tunnel\n"


async def test_loopback_named_by_host_alone_or_by_another_port_is_refused(echo_port: int) -> None:
    by_host = await through(
        NetworkPolicy.parse(["127.0.0.1"]), b"CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n"
    )
    assert by_host.endswith(
        b"agentqueue sandbox proxy refused the request: 127.0.0.1:443 resolves to 127.0.0.1, a"
        b" loopback, private or link-local address; only an allow-list entry naming exactly"
        b" '127.0.0.1:443' opens it\n"
    )
    assert by_host.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    other_port = await through(
        NetworkPolicy.parse([f"127.0.0.1:{echo_port}"]),
        f"GET http://127.0.0.1:{echo_port + 1}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    )
    assert other_port.endswith(
        f"127.0.0.1:{echo_port + 1} is not on the sandbox's network allow list\n".encode()
    )


async def test_a_private_or_link_local_address_needs_its_exact_entry() -> None:
    for address in ("10.1.2.3", "192.168.0.1", "169.254.169.254"):
        with pytest.raises(SandboxError) as refused:
            await NetworkPolicy.parse([address]).resolve(address, 80)
        assert str(refused.value) == (
            f"{address}:80 resolves to {address}, a loopback, private or link-local address;"
            f" only an allow-list entry naming exactly '{address}:80' opens it"
        )
        assert await NetworkPolicy.parse([f"{address}:80"]).resolve(address, 80) == address


def test_a_network_policy_that_is_neither_none_nor_a_list_of_hosts_is_refused() -> None:
    with pytest.raises(SandboxError) as refused:
        NetworkPolicy.parse("all")
    assert str(refused.value) == (
        "network policy 'all' is unknown: give 'none' or a list of hosts, e.g. ['example.com',"
        " '127.0.0.1:8080']"
    )
    with pytest.raises(SandboxError) as bad:
        NetworkPolicy.parse(["example.com:http"])
    assert str(bad.value) == (
        "network allow-list entry 'example.com:http' is not a host or host:port, e.g."
        " 'example.com' or '127.0.0.1:8080'"
    )
