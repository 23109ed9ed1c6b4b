"""A TCP proxy in front of a test broker, run on a thread of its own, to cut connections at will.

A fixture's set-up and tear-down are not one task, so the proxy cannot live in a task group
across them: it runs in a blocking portal instead, and the test calls it through the portal.
"""

from __future__ import annotations

import contextlib

import anyio.from_thread

from agentqueue.deploy.local.tcp_proxy import TcpProxy


class ThreadedProxy:
    """`TcpProxy` to 127.0.0.1:`target_port`; `url()` points a broker URL at it."""

    def __init__(self, target_port: int) -> None:
        self._stack = contextlib.ExitStack()
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self.proxy = TcpProxy(target_port)
        # start_task returns once run() has its listening port (task_status.started()).
        self._portal.start_task(self.proxy.run)

    def url(self, target_url: str) -> str:
        """`target_url` (amqp://…:target_port/) through the proxy."""
        return self.proxy.url(target_url)

    def cut(self) -> int:
        """Drop every proxied connection now; how many there were."""
        return self._portal.call(self.proxy.cut)

    def refuse(self, refusing: bool) -> None:
        """Close new connections at once (True) or forward them again (False)."""
        self.proxy.refusing = refusing

    def close(self) -> None:
        """Stop the proxy and its thread."""
        self._portal.call(self._portal.stop, True)
        self._stack.close()


def port_of(url: str) -> int:
    """The port of an amqp://host:port/ URL."""
    return int(url.rsplit(":", 1)[1].strip("/"))
