"""Run a development server (uvicorn) in a daemon thread of the calling process."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind a TCP socket on host:port (0: any free port), naming the address if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from error
    return sock


def serve_in_thread(
    server: uvicorn.Server, sock: socket.socket, *, name: str, what: str, timeout: float
) -> threading.Thread:
    """Serve on `sock` in a daemon thread; return it once the server accepts connections."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout)
            sock.close()
            raise RuntimeError(
                f"{what} did not start within {timeout} s; see the log of logger 'uvicorn.error'"
            )
        time.sleep(0.01)
    return thread


def stop_in_thread(
    server: uvicorn.Server, thread: threading.Thread, *, what: str, timeout: float
) -> None:
    """Ask the server to exit and wait for its thread; raise if it still serves after timeout."""
    server.should_exit = True
    thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"{what} did not stop in {timeout} s")
