"""Free TCP ports on 127.0.0.1 for local servers."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_ports(count: int = 1, host: str = HOST) -> list[int]:
    """Return count distinct TCP ports on host that are free right now."""
    sockets = []
    try:
        # Hold every socket open until all are bound, so the kernel cannot hand out one twice.
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = HOST) -> int:
    """Return one TCP port on host that is free right now."""
    return free_ports(1, host)[0]
