"""Watching servers answer: one poll process per server, reporting each version change.

:class:`Watch` starts one spawned process per server. Each sends the same
single-instance ``:predict`` request back to back on one keep-alive
connection (stdlib ``http.client``: about 0.8 ms a round trip on this machine
where httpx took 1.25 ms, and its tail half as long), parses every answer's
``model_version``, and reports to the benchmark only when the version it
answered differs from the previous answer: ``(version, received)``, the
``time.monotonic`` reading taken as the response had been read (the same
clock in every process on Linux). A poller has its own interpreter, so it
waits for no other poller's or load generator's GIL; it takes its timestamp
before parsing the body and before any message to the benchmark.

The benchmark's side (a thread reading the pollers' pipes) records, for the
armed target version, when each server first answered with it; a server that
answers with another version after that counts as *regressed*.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any
from urllib.parse import urlsplit

import orjson


def _poll_main(conn: Connection, url: str, path: str, body: bytes, idle_s: float) -> None:
    """The poll loop (child process): back to back after ``"fast"``, one request
    every ``idle_s`` after ``"slow"`` (the start), until ``"stop"``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    failed = 0
    errors: list[str] = []
    last: str | None = None
    fast = False
    client = http.client.HTTPConnection(host, port, timeout=30.0)
    conn.send(("ready",))
    while True:
        if conn.poll(0.0 if fast else idle_s):
            command = conn.recv()
            if command == "stop":
                break
            fast = command == "fast"
            if fast:
                conn.send(("fast",))
        sent = time.monotonic()
        try:
            client.request("POST", path, body=body, headers=headers)
            response = client.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            failed += 1
            if len(errors) < 5:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            client.close()  # reconnects on the next request
            continue
        received = time.monotonic()
        latencies.append(received - sent)
        if response.status != 200:
            failed += 1
            if len(errors) < 5:
                errors.append(f"HTTP {response.status}: {data[:200]!r}")
            continue
        version = str(orjson.loads(data)["model_version"])
        if version != last:
            conn.send(("seen", version, received))
            last = version
    client.close()
    conn.send(("done", latencies, failed, errors))


class Watch:
    """One poll process per server: when each first answers with the armed version."""

    def __init__(self, urls: list[str], path: str, body: bytes, *, idle_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.cond = threading.Condition()
        self.target: str | None = None
        self.t0: float | None = None
        self.first: list[float | None] = [None] * len(urls)
        self.regressed = 0
        self.latencies: list[float] = []
        self.failed = 0
        self.errors: list[str] = []
        self._ready = 0
        self._fast = 0
        self._done = 0
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for url in urls:
            parent, child = ctx.Pipe()
            args = (child, url, path, body, idle_s)
            proc = ctx.Process(target=_poll_main, args=args, daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._reader = threading.Thread(target=self._read, name="poll-reader", daemon=True)
        self._reader.start()

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until every poller has connected and sends."""
        with self.cond:
            if not self.cond.wait_for(lambda: self._ready == len(self._conns), timeout_s):
                raise SystemExit("a poll process did not start")

    def arm(self, version: str, timeout_s: float = 30.0) -> None:
        """Watch for ``version``; returns once every poller polls back to back."""
        with self.cond:
            self.target, self.t0 = version, None
            self.first = [None] * len(self._conns)
            self._fast = 0
        for conn in self._conns:
            conn.send("fast")
        with self.cond:
            if not self.cond.wait_for(lambda: self._fast == len(self._conns), timeout_s):
                raise SystemExit("a poll process did not answer")

    def relax(self) -> None:
        """Back to one request per ``idle_s`` (still checked: see *regressed*)."""
        for conn in self._conns:
            conn.send("slow")

    def returned(self, t0: float) -> None:
        with self.cond:
            self.t0 = t0
            self.cond.notify_all()

    def wait(self, timeout_s: float) -> list[float] | None:
        """Each server's convergence, seconds after the call returned (0 if before)."""
        with self.cond:
            done = self.cond.wait_for(
                lambda: self.t0 is not None and all(f is not None for f in self.first),
                timeout_s,
            )
            if not done or self.t0 is None:
                return None
            t0 = self.t0
            return [max(0.0, f - t0) for f in self.first if f is not None]

    def _read(self) -> None:
        index = {id(c): i for i, c in enumerate(self._conns)}
        open_conns = list(self._conns)
        while open_conns:
            for ready in wait(open_conns):
                conn = ready if isinstance(ready, Connection) else None
                if conn is None:
                    continue
                try:
                    message = conn.recv()
                except EOFError:
                    open_conns.remove(conn)
                    continue
                self._on(index[id(conn)], message)
                if message[0] == "done":
                    open_conns.remove(conn)

    def _on(self, i: int, message: tuple[Any, ...]) -> None:
        with self.cond:
            kind = message[0]
            if kind == "ready":
                self._ready += 1
            elif kind == "fast":
                self._fast += 1
            elif kind == "seen":
                _, version, received = message
                if self.target is not None:
                    if self.first[i] is None:
                        if version == self.target:
                            self.first[i] = received
                    elif version != self.target:
                        self.regressed += 1  # answered another version after the new one
            elif kind == "done":
                _, latencies, failed, errors = message
                self.latencies.extend(latencies)
                self.failed += failed
                self.errors.extend(errors[: max(0, 5 - len(self.errors))])
                self._done += 1
            self.cond.notify_all()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the pollers and collect what they measured."""
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a poller that died already
                conn.send("stop")
        self._reader.join(timeout_s)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
