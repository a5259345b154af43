"""Readiness probes that speak each server's protocol.

A server is ready when it answers a real request, not when its log says so:
:func:`kafka_metadata` sends a Kafka ``Metadata`` request (v1) and parses the
broker list; :func:`redis_ping` sends ``PING`` and expects ``+PONG``. Both use
a plain socket with a timeout and raise ``OSError`` (or ``ValueError`` for an
answer that is not the protocol) when the server is not ready.
"""

from __future__ import annotations

import socket
import struct

_METADATA_API_KEY = 3
_METADATA_VERSION = 1
_CLIENT_ID = b"driftloop-probe"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed before the full answer arrived")
        chunks += chunk
    return bytes(chunks)


def _read_string(buf: bytes, at: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">h", buf, at)
    at += 2
    if length < 0:
        return "", at
    return buf[at : at + length].decode("utf-8"), at + length


def kafka_metadata(host: str, port: int, timeout_s: float = 2.0) -> list[tuple[int, str, int]]:
    """The brokers ``(node_id, host, port)`` a Kafka broker advertises.

    Sends one ``Metadata`` v1 request asking for no topics. A broker that
    answers with at least one broker is ready for clients.
    """
    correlation_id = 0x0D1F
    header = struct.pack(
        ">hhih", _METADATA_API_KEY, _METADATA_VERSION, correlation_id, len(_CLIENT_ID)
    )
    body = struct.pack(">i", 0)  # v1: an empty array asks for no topics (null would mean all)
    request = header + _CLIENT_ID + body
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 16 * 1024 * 1024:
            raise ValueError(f"not a Kafka answer (frame size {size})")
        answer = _recv_exact(sock, size)
    (got_id, n_brokers) = struct.unpack_from(">ii", answer, 0)
    if got_id != correlation_id:
        raise ValueError("not a Kafka answer (correlation id mismatch)")
    brokers: list[tuple[int, str, int]] = []
    at = 8
    for _ in range(n_brokers):
        (node_id,) = struct.unpack_from(">i", answer, at)
        broker_host, at = _read_string(answer, at + 4)
        (broker_port,) = struct.unpack_from(">i", answer, at)
        at += 4
        _rack, at = _read_string(answer, at)  # v1 adds a nullable rack
        brokers.append((node_id, broker_host, broker_port))
    if not brokers:
        raise ValueError("the broker answered but advertises no brokers yet")
    return brokers


def redis_ping(host: str, port: int, timeout_s: float = 2.0) -> None:
    """Send ``PING``; return when the answer is ``+PONG``."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ConnectionError("connection closed before PONG")
            answer += chunk
    if answer != b"+PONG\r\n":
        raise ValueError(f"unexpected answer to PING: {answer[:60]!r}")
