"""Frames written together: one socket write per turn of the event loop, not one per frame.

aiormq writes every frame (a publish, an ack, a heartbeat) to the socket as it is queued, and
asyncio sends each one with a system call of its own. Under load many frames are queued in one
turn of the loop, and those calls were the largest single cost of a worker and a client (about
a sixth of their CPU in the flame graphs, `benchmarks/results/flames/`). Here the frames
queued in one turn are joined and written once, at the end of the turn: the same bytes in the
same order, sent a few microseconds later. aiormq drains after every frame it is asked to
confirm the sending of (each publish and ack): that drain waits for the transport's flow
control as before, but does not write early, or nothing would be joined. A close, and a drain
with a lot pending, write what is pending first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
from aiormq.connection import TCPTransportFactory, TLSTransportFactory
from yarl import URL

FLUSH_AT = 256 * 1024  # pending bytes a drain writes at once instead of at the turn's end


class CoalescingWriter:
    """Wraps asyncio's stream writer: the writes of one loop turn become one transport write.

    A wrapper, not a second `StreamWriter` on the same transport: a writer that is dropped
    closes its transport when it is collected.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes | bytearray | memoryview] = []
        self._size = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(data)
        self._size += len(data)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is pending now (called at the end of the loop turn that queued it)."""
        if not self._pending:
            return
        pending, self._pending, self._size = self._pending, [], 0
        self._writer.write(pending[0] if len(pending) == 1 else b"".join(pending))

    async def drain(self) -> None:
        if self._size >= FLUSH_AT:
            self.flush()  # the transport's flow control sees it now
        await self._writer.drain()

    def close(self) -> None:
        self.flush()
        self._writer.close()


class _Coalescing(aiormq.TransportFactory):
    """aiormq's own TCP or TLS transport, with a `CoalescingWriter` on it."""

    def __init__(self, base: aiormq.TransportFactory) -> None:
        self.base = base

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.base.create(url, **kwargs)
        return reader, CoalescingWriter(writer)  # type: ignore[return-value]


def coalescing_transport(url: str | URL) -> aiormq.TransportFactory:
    """The transport factory for `url` (amqp:// or amqps://) whose frames are written together."""
    tls = URL(str(url)).scheme == "amqps"
    return _Coalescing(TLSTransportFactory() if tls else TCPTransportFactory())
