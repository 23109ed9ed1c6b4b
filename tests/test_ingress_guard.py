"""The ingress server's guard: deadlines for headers and body, and a connection limit."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import anyio

from agentqueue.broker.memory import MemoryBroker
from agentqueue.broker.topology import Topology
from agentqueue.ingress.app import Ingress
from agentqueue.ingress.server import Limits
from agentqueue.protocol import new_id
from tests.ingress_server import serving

BODY = json.dumps(
    {"input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
).encode()
HEAD = (
    b"POST /v1/requests HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n" % len(BODY)
)


@dataclass
class Exchange:
    """What a raw client saw: the answer, what it managed to send, when the server closed."""

    answer: bytes
    sent: int
    closed_after: float | None  # seconds from connecting; None: the client stopped first

    @property
    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else 0

    @property
    def error(self) -> str:
        return json.loads(self.answer.partition(b"\r\n\r\n")[2])["error"]


async def trickle(
    port: int, data: bytes = b"", *, pace: float = 0.0, start: bytes = b""
) -> Exchange:
    """Send `start` at once, then `data` one byte every `pace` seconds, until the server closes.

    A client that has sent everything waits (at most 30 s) for the server to close.
    """
    began = time.monotonic()  # before connecting: the server's clock cannot start earlier
    stream = await anyio.connect_tcp("127.0.0.1", port)
    answer = bytearray()
    closed: list[float] = []
    sent = 0

    async def read() -> None:
        try:
            while True:
                answer.extend(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            closed.append(time.monotonic() - began)
            tg.cancel_scope.cancel()

    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(read)
        try:
            if start:
                await stream.send(start)
            for i in range(len(data)):
                await stream.send(data[i : i + 1])
                sent += 1
                await anyio.sleep(pace)  # the slow client under test, not a wait for a condition
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass
        with anyio.fail_after(30):
            await anyio.sleep_forever()  # until the reader sees the close and ends the group
    return Exchange(bytes(answer), sent, closed[0] if closed else None)


async def ingress() -> tuple[MemoryBroker, Ingress]:
    topology = Topology(namespace=f"g{new_id()[:6]}", partitions=2, tool_partitions=2)
    broker = MemoryBroker(f"memory://guard-{new_id()[:8]}")
    await broker.connect()
    await broker.declare(topology)
    return broker, Ingress(broker, topology=topology)


async def test_50_clients_sending_headers_byte_by_byte_are_closed_at_the_limit() -> None:
    broker, app = await ingress()
    limits = Limits(header_timeout=1.0, body_timeout=30)
    async with broker, serving(app, limits) as (_, port, server):
        exchanges: list[Exchange] = []

        async def one() -> None:
            exchanges.append(await trickle(port, HEAD + BODY, pace=0.1))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        counts = server.config.http_protocol_class.counts  # type: ignore[attr-defined]
    assert len(exchanges) == 50
    for exchange in exchanges:
        assert exchange.status == 408
        assert (
            exchange.error
            == "the request headers did not arrive within 1 s; the connection is closed"
        )
        assert exchange.closed_after is not None and exchange.closed_after >= 1.0
        assert exchange.sent < len(HEAD)  # closed long before the client would have finished
    assert counts.slow_headers == 50
    closes = sorted(e.closed_after for e in exchanges if e.closed_after is not None)
    print(f"\n50 slow clients closed after {closes[0]:.3f}-{closes[-1]:.3f} s (limit 1 s)")


async def test_a_body_sent_byte_by_byte_is_closed_at_the_body_limit() -> None:
    broker, app = await ingress()
    async with broker, serving(app, Limits(header_timeout=30, body_timeout=1.0)) as (_, port, _):
        exchange = await trickle(port, BODY, pace=0.05, start=HEAD)
    assert exchange.status == 408
    assert exchange.error == "the request body did not arrive within 1 s; the connection is closed"
    assert exchange.closed_after is not None and exchange.closed_after >= 1.0
    assert exchange.sent < len(BODY)
    print(f"\nslow body closed after {exchange.closed_after:.3f} s (limit 1 s)")


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_limit() -> None:
    broker, app = await ingress()
    async with broker, serving(app, Limits(header_timeout=0.5)) as (_, port, _):
        exchange = await trickle(port)
    assert exchange.status == 408
    assert exchange.error == (
        "the request headers did not arrive within 0.5 s; the connection is closed"
    )
    assert exchange.closed_after is not None and exchange.closed_after >= 0.5


async def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too() -> None:
    broker, app = await ingress()
    async with broker, serving(app, Limits(header_timeout=1.0)) as (_, port, _):
        exchange = await trickle(port, HEAD + BODY, pace=0.05, start=HEAD + BODY)
    first, _, rest = exchange.answer.partition(b"HTTP/1.1 408")
    assert first.startswith(b"HTTP/1.1 202 Accepted")
    assert rest, exchange.answer
    assert exchange.sent < len(HEAD)


async def test_a_connection_over_the_limit_gets_503_at_once_and_is_served_once_one_closes() -> None:
    broker, app = await ingress()
    limits = Limits(header_timeout=30, max_connections=3)
    async with broker, serving(app, limits) as (http, port, server):
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(3)]
        over = await trickle(port)  # sends nothing: the answer comes before any request
        for stream in idle:
            await stream.aclose()
        with anyio.fail_after(10):
            while True:  # the server notices the closes on its own time
                served = await http.post(
                    "/v1/requests", content=BODY, headers={"content-type": "application/json"}
                )
                if served.status_code != 503:
                    break
                await anyio.sleep(0.05)
        counts = server.config.http_protocol_class.counts  # type: ignore[attr-defined]
    assert over.status == 503
    assert over.error == "the ingress has 3 connections open, its limit; retry shortly"
    assert served.status_code == 202
    assert counts.refused >= 1
