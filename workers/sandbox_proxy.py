"""The filtering forward proxy a worker runs, outside the sandboxes, for their browsers.

A browser sandbox has no network of its own (`--unshare-net`: only its own loopback). With an
allow list, the worker listens on a unix socket bind-mounted into the sandbox; a relay on the
sandbox's loopback (`sandbox_launch.py`) carries Chromium's proxy connections to it. Here each
request (`CONNECT host:port` or an absolute `http://` URL) is checked against the list before
any connection is made: a host must be listed (`host` opens ports 80 and 443, `host:port` that
port), and an address that is loopback, private, link-local or otherwise not public is refused
unless the list names that exact `host:port`. The proxy connects to the address it checked, so a
name cannot resolve to something else between the check and the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agentqueue.workers.errors import SandboxError

log = logging.getLogger("agentqueue.sandbox")

HEAD_LIMIT = 64 * 1024  # bytes of request line and headers


@dataclass(frozen=True)
class NetworkPolicy:
    """`none` (no network at all) or the hosts a sandbox's browser may reach."""

    allow: tuple[str, ...] = ()

    @classmethod
    def parse(cls, network: str | Iterable[str]) -> NetworkPolicy:
        """`"none"` or a list of `host` / `host:port` entries; anything else is refused."""
        if isinstance(network, str):
            if network == "none":
                return cls()
            raise SandboxError(
                f"network policy {network!r} is unknown: give 'none' or a list of hosts,"
                " e.g. ['example.com', '127.0.0.1:8080']"
            )
        entries = []
        for entry in network:
            host, port = split_host_port(entry, None)
            if not host or (port is not None and not 0 < port < 65536):
                raise SandboxError(
                    f"network allow-list entry {entry!r} is not a host or host:port,"
                    " e.g. 'example.com' or '127.0.0.1:8080'"
                )
            entries.append(entry.lower())
        if not entries:
            raise SandboxError("network allow list is empty: give 'none' for no network")
        return cls(tuple(entries))

    @property
    def none(self) -> bool:
        """Whether the sandbox gets no network at all (no proxy, no socket mounted)."""
        return not self.allow

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to for `host:port`; SandboxError says why it is refused."""
        host = host.lower().strip("[]")
        exact = f"{host}:{port}" in self.allow or f"[{host}]:{port}" in self.allow
        if not exact and not (host in self.allow and port in (80, 443)):
            raise SandboxError(f"{host}:{port} is not on the sandbox's network allow list")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise SandboxError(f"{host} does not resolve: {exc}") from None
        address = str(infos[0][4][0])
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if not ip.is_global and not exact:
                raise SandboxError(
                    f"{host}:{port} resolves to {ip}, a loopback, private or link-local address;"
                    f" only an allow-list entry naming exactly '{host}:{port}' opens it"
                )
        return address


def network_allow_list(network: str | Iterable[str]) -> tuple[str, ...]:
    """The allow list a `network=` argument names (`()` for `"none"`), checked now."""
    return NetworkPolicy.parse(network).allow


def split_host_port(target: str, default: int | None) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port` or `host` split; the port is `default` when absent."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if not port:
        return host, default
    if not port.isdigit():
        return "", None
    return host, int(port)


class FilteringProxy:
    """An HTTP forward proxy on a unix socket that lets through what `policy` allows."""

    def __init__(self, policy: NetworkPolicy, path: Path) -> None:
        self.policy = policy
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.refused: list[str] = []  # the latest refusals, for the operator and for tests

    async def start(self) -> None:
        """Listen on `path` (its directory is what the sandboxes mount)."""
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o600)  # the sandboxes' user is the worker's outside their namespace

    async def close(self) -> None:
        """Stop listening; connections in flight end with their sandboxes."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._proxy(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the browser gave up on the connection
        finally:
            writer.close()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = ([*request_line.split(" "), "", ""])[:3]
        if method == "CONNECT":
            host, port = split_host_port(target, 443)
            path = ""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                await self._refuse(writer, f"{target!r} is not an http:// URL the proxy forwards")
                return
            host, port = url.hostname, url.port or 80
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            if port is None:
                raise SandboxError(f"{target!r} has no valid port")
            address = await self.policy.resolve(host, port)
            upstream_reader, upstream_writer = await asyncio.open_connection(address, port)
        except (SandboxError, OSError) as exc:
            await self._refuse(writer, str(exc))
            return
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                # One upstream per connection: `close` stops the browser from sending a request
                # for another host down a pipe that was checked for this one.
                kept = [h for h in headers if h and h.split(":")[0].lower() not in HOP_BY_HOP]
                lines = [f"{method} {path} {version}", *kept, "Connection: close", "", ""]
                upstream_writer.write("\r\n".join(lines).encode("latin-1"))
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.refused = [*self.refused[-49:], reason]
        log.info("sandbox proxy refused a connection: %s", reason)
        body = f"agentqueue sandbox proxy refused the request: {reason}\n".encode()
        writer.write(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()


HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te"}


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` into `writer` until end of stream, then half-close the writer."""
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
