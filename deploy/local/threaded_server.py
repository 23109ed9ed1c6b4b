"""Run a development server (uvicorn) in a daemon thread of the calling process."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


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
