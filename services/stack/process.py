"""Child server processes that cannot outlive their parent.

:class:`ChildProcess` starts a server binary with its output going to a log
file (so a failure can quote the tail of it), and stops it with SIGTERM, a
grace period, then SIGKILL.

On Linux every child also gets ``PR_SET_PDEATHSIG = SIGKILL``: the kernel
kills it when its parent dies, even by ``kill -9``. The kernel ties that
signal to the *thread* that forked the child, not to the process, so a server
started from a short-lived thread would be killed when that thread ends. To
make that impossible every child is forked from one process-wide daemon
thread (:func:`_spawn`), which lives as long as the process does.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago.

    Another process may take it before the server binds it; callers retry
    with a fresh port when the server fails to bind (see ``EmbeddedStack``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that asks Linux to SIGKILL the child when its parent dies."""

    def preexec() -> None:
        os.setpgrp()  # Ctrl-C in a terminal reaches the parent only; it stops us in order.
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return preexec


_Request = tuple[
    Callable[[], subprocess.Popen[bytes]], "concurrent.futures.Future[subprocess.Popen[bytes]]"
]
_requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        start, future = _requests.get()
        try:
            future.set_result(start())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, who re-raises it
            future.set_exception(exc)


def _spawn(start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Run ``start`` (which forks) on the long-lived spawner thread."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="driftloop-spawner", daemon=True)
            _spawner.start()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _requests.put((start, future))
    return future.result()


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a TCP socket listening on ``port``.

    Used to tell our server from another one that grabbed the same port.
    Returns None where ``/proc`` is unavailable (not Linux): callers then rely
    on the child still being alive.
    """
    if not os.path.isdir(f"/proc/{pid}/fd"):
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


class ChildProcess:
    """One server binary running as our child.

    Parameters
    ----------
    name:
        Short name used in errors and logs (``"tansu"``, ``"redis"``).
    argv:
        The command line; ``argv[0]`` is the binary.
    log_path:
        File receiving the child's stdout and stderr.
    port:
        The port the server was told to listen on (for errors).
    stop_signal:
        The signal that asks the server to shut down cleanly (Tansu ignores
        SIGTERM and stops on SIGINT; Redis stops on SIGTERM).
    env:
        The child's environment (default: this process's).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        port: int,
        *,
        stop_signal: signal.Signals = signal.SIGTERM,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.log_path = log_path
        self.port = port
        parent = os.getpid()
        log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - the child owns it until stop()
        self._log = log
        try:
            self._proc = _spawn(
                lambda: subprocess.Popen(  # noqa: S603 - argv is a binary path we resolved, no shell
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent(parent),
                    close_fds=True,
                    env=None if env is None else dict(env),
                )
            )
        except BaseException:
            log.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def binary(self) -> str:
        return self.argv[0]

    def exit_code(self) -> int | None:
        """The exit code once the child has ended, else None."""
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def output_tail(self, max_lines: int = 20) -> str:
        """The last lines the child wrote, for error messages."""
        try:
            text = self.log_path.read_bytes()[-8192:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-max_lines:])

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop the child: its stop signal, wait up to ``grace_s``, then SIGKILL. Idempotent."""
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(self.stop_signal)
                try:
                    self._proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=grace_s)
        finally:
            self._log.close()

    def __repr__(self) -> str:
        return f"ChildProcess({self.name!r}, pid={self.pid}, port={self.port})"
