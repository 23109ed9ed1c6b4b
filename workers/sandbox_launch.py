"""Runs inside a browser sandbox: a relay from the sandbox's loopback to the worker's proxy.

`python -I -S sandbox_launch.py SOCKET PORT -- PROGRAM ARGS...` (standard library only). With a
SOCKET, it listens on 127.0.0.1:PORT of the sandbox's own network namespace, forks a relay that
carries each connection to the unix socket the worker bind-mounted (the filtering proxy), and
then becomes PROGRAM (Chromium, pointed at 127.0.0.1:PORT by `--proxy-server`). With SOCKET
`-` there is no relay: the sandbox has no way out at all. Chromium stays the main process, so
the inherited pipes Playwright speaks over (fds 3 and 4) reach it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _relay(listener: socket.socket, path: str) -> None:
    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(path)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()
            writer.close()

    server = await asyncio.start_server(carry, sock=listener)
    async with server:
        await server.serve_forever()


def main() -> None:
    path, port, separator, *program = sys.argv[1:]
    assert separator == "--" and program, "usage: sandbox_launch.py SOCKET PORT -- PROGRAM ..."
    if path != "-":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", int(port)))
        listener.listen(128)
        # Bound before the fork, so Chromium's first request finds the relay listening.
        if os.fork() == 0:
            os.setsid()
            for fd in (3, 4):  # Playwright's pipes are Chromium's: the relay must not hold them
                with contextlib.suppress(OSError):
                    os.close(fd)
            asyncio.run(_relay(listener, path))
            os._exit(0)
        listener.close()
    os.execv(program[0], program)


if __name__ == "__main__":
    main()
