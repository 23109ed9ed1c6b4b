"""A TCP proxy on 127.0.0.1 in front of a local broker, to cut its clients off at will.

`cut()` closes every proxied connection at once, on both sides, as a network failure between the
client and the broker would: the client's robust connection sees its socket die and reconnects
(through the proxy again), and the broker sees the client go away (its un-acked replies return
to the reply queue).
"""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

HOST = "127.0.0.1"


class TcpProxy:
    """Forwards `HOST:port` to `HOST:target_port`; `cut()` drops all current connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # known once run() has started
        self.cuts = 0
        self.refusing = False  # while True, new connections are closed at once (a partition)
        self._scopes: set[anyio.CancelScope] = set()

    def url(self, template: str) -> str:
        """`template` (an amqp:// URL of the target) pointed at the proxy instead."""
        return template.replace(f":{self.target_port}/", f":{self.port}/")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and forward connections until cancelled."""
        listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._forward)

    def cut(self) -> int:
        """Close every proxied connection now; return how many there were."""
        scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()
        self.cuts += 1
        return len(scopes)

    async def _forward(self, client: anyio.abc.SocketStream) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with client:
                    if self.refusing:
                        return
                    try:
                        upstream = await anyio.connect_tcp(HOST, self.target_port)
                    except OSError:
                        return  # the broker is down: the client sees the connection close
                    async with upstream, anyio.create_task_group() as tg:
                        tg.start_soon(_pipe, client, upstream, tg.cancel_scope)
                        tg.start_soon(_pipe, upstream, client, tg.cancel_scope)
            finally:
                self._scopes.discard(scope)


async def _pipe(
    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, both: anyio.CancelScope
) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        both.cancel()  # one side gone: close the other too
