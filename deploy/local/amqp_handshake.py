"""A hand-written AMQP 0-9-1 login, to tell when a RabbitMQ node serves without a client library."""

from __future__ import annotations

import socket
import struct

from agentqueue.deploy.local.ports import HOST

_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1
_FRAME_END = 0xCE


class AmqpRefusedError(ConnectionError):
    """The broker closed the AMQP connection during the handshake with a reply code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"broker refused the AMQP connection: {code} {text}")
        self.code = code
        self.text = text


def _shortstr(value: bytes) -> bytes:
    return struct.pack(">B", len(value)) + value


def _longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _method_frame(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack(">HH", class_id, method_id) + args
    return struct.pack(">BHI", _FRAME_METHOD, 0, len(payload)) + payload + bytes([_FRAME_END])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the TCP connection during the AMQP handshake")
        data += chunk
    return data


def _expect_method(sock: socket.socket, class_id: int, method_id: int) -> bytes:
    while True:
        kind, _channel, size = struct.unpack(">BHI", _recv_exact(sock, 7))
        payload = _recv_exact(sock, size + 1)[:-1]
        if kind != _FRAME_METHOD:
            continue  # heartbeats
        got_class, got_method = struct.unpack(">HH", payload[:4])
        if (got_class, got_method) == (10, 50):  # connection.close
            code = struct.unpack(">H", payload[4:6])[0]
            text = payload[7 : 7 + payload[6]].decode(errors="replace")
            raise AmqpRefusedError(code, text)
        if (got_class, got_method) != (class_id, method_id):
            raise ConnectionError(
                f"expected AMQP method {class_id}.{method_id}, got {got_class}.{got_method}"
            )
        return payload[4:]


def amqp_login(
    port: int,
    *,
    host: str = HOST,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    timeout: float = 5.0,
) -> None:
    """Open and close one AMQP 0-9-1 connection; raise OSError if the broker won't have it."""
    # Asking for authentication_failure_close makes a wrong login a readable 403 instead of EOF.
    capabilities = _shortstr(b"authentication_failure_close") + b"t\x01"
    client_properties = _shortstr(b"capabilities") + b"F" + _longstr(capabilities)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_AMQP_HEADER)
        _expect_method(sock, 10, 10)  # connection.start
        response = b"\0" + user.encode() + b"\0" + password.encode()
        start_ok = (
            _longstr(client_properties)
            + _shortstr(b"PLAIN")
            + _longstr(response)
            + _shortstr(b"en_US")
        )
        sock.sendall(_method_frame(10, 11, start_ok))
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", _expect_method(sock, 10, 30)[:8])
        sock.sendall(_method_frame(10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        sock.sendall(_method_frame(10, 40, _shortstr(vhost.encode()) + _shortstr(b"") + b"\x00"))
        _expect_method(sock, 10, 41)  # connection.open-ok
        sock.sendall(_method_frame(10, 50, struct.pack(">H", 200) + _shortstr(b"") + b"\0\0\0\0"))
        _expect_method(sock, 10, 51)  # connection.close-ok
