"""A TCP proxy that can be stopped and started again, to make a broker unreachable.

Kafka clients connect to the address the broker *advertises* in metadata,
not to the bootstrap address, so a proxy in front of a broker is bypassed
unless the broker advertises the proxy: :func:`private_broker` starts a Tansu
broker listening on one port and advertising the proxy's port.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.config import KafkaConfig
from services.stack.binaries import tansu_binary
from services.stack.probes import kafka_metadata
from services.stack.process import ChildProcess, free_port

HOST = "127.0.0.1"


class TcpProxy:
    """Forwards ``HOST:port`` to ``target``; :meth:`stop` refuses connections and cuts
    every open one (the broker "unreachable"), :meth:`start` listens again."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                listener.bind((HOST, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.1)
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        if self._thread is not None:
            self._thread.join(10)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@dataclass
class ProxiedBroker:
    """A private broker reachable only through ``proxy`` (``kafka`` is its bootstrap)."""

    proxy: TcpProxy
    kafka: KafkaConfig


@contextlib.contextmanager
def private_broker(workdir: Path, **kafka_fields: object) -> Iterator[ProxiedBroker]:
    """A Tansu broker of its own (in-memory storage) advertising a proxy's port."""
    broker_port, proxy_port = free_port(HOST), free_port(HOST)
    child = ChildProcess(
        "tansu",
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            f"tcp://{HOST}:{broker_port}",
            "--advertised-listener-url",
            f"tcp://{HOST}:{proxy_port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        workdir / f"tansu-{broker_port}.log",
        broker_port,
        stop_signal=signal.SIGINT,
    )
    proxy = TcpProxy(proxy_port, (HOST, broker_port))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                kafka_metadata(HOST, broker_port, timeout_s=1.0)
                break
            except Exception:  # noqa: BLE001 - any failure means "not up yet"; the deadline bounds it
                if time.monotonic() > deadline or not child.is_running():
                    raise AssertionError(
                        f"private broker did not start: {child.output_tail()}"
                    ) from None
                time.sleep(0.1)
        proxy.start()
        yield ProxiedBroker(
            proxy,
            KafkaConfig(bootstrap=f"{HOST}:{proxy_port}", **kafka_fields),  # type: ignore[arg-type]
        )
    finally:
        proxy.stop()
        child.stop()
