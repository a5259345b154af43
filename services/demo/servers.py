"""The demo's model servers: ``driftloop serve`` children and an HTTP client for each.

:class:`DemoServer` starts one ``driftloop serve`` process on a free loopback
port (a :class:`~services.stack.process.ChildProcess`, so it dies with the
demo even when the demo is killed), with its own ``--server-id`` and spool
directory, on the demo's store (opened read-only) and stack. It keeps one
keep-alive :class:`httpx.Client` to it and counts what it served
(:class:`ServerStats`).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from schemas.errors import StackError
from services.stack.process import ChildProcess, free_port

#: How long a stopping server may take to flush its inference logs.
STOP_GRACE_S = 30.0


@dataclass
class ServerStats:
    """What one server did for the demo, and what it last said it serves."""

    server_id: str
    port: int
    pid: int
    requests: int = 0
    """Instances it answered."""
    predict_calls: int = 0
    feedback_posted: int = 0
    """Feedback events it accepted (202)."""
    retries: int = 0
    """Calls answered 503 (not ready, or feedback not acknowledged in time) and sent again."""
    versions: Counter[str] = field(default_factory=Counter)
    """Version -> instances it served."""
    routes: Counter[str] = field(default_factory=Counter)
    """Route (``live``, ``canary``) -> instances it answered on it."""
    live: str | None = None
    epoch: int | None = None
    """The pointer epoch it reports having applied (``GET /v1/models/{model}``)."""
    ready: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server_id,
            "port": self.port,
            "pid": self.pid,
            "requests": self.requests,
            "predict_calls": self.predict_calls,
            "feedback_posted": self.feedback_posted,
            "retries": self.retries,
            "versions_served": dict(sorted(self.versions.items())),
            "routes_served": dict(sorted(self.routes.items())),
            "live": self.live,
            "applied_epoch": self.epoch,
        }


class DemoServer:
    """One ``driftloop serve`` child serving ``model`` of ``config`` from ``store``.

    Parameters
    ----------
    server_id
        Its ``--server-id`` (named in its inference logs and the servers hash).
    env
        The environment pointing it at the stack, with signing/trust settings.
    workdir
        Where its log file and spool directory go.
    """

    def __init__(
        self,
        server_id: str,
        *,
        model: str,
        config: Path,
        store: Path,
        env: dict[str, str],
        workdir: Path,
    ) -> None:
        self.model = model
        port = free_port()
        spool = workdir / f"spool-{server_id}"
        spool.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "services.cli", "serve", "--config", str(config)]
        argv += ["--store", str(store), "--model", model, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--server-id", server_id]
        child_env = env | {
            "DRIFTLOOP_SERVER_SPOOL_DIR": str(spool),
            "DRIFTLOOP_SERVER_POLL_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_REPORT_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_LOG_LEVEL": "warning",
        }
        self.process = ChildProcess(
            f"serve-{server_id}",
            argv,
            workdir / f"{server_id}.log",
            port,
            stop_signal=signal.SIGTERM,
            env=child_env,
        )
        self.stats = ServerStats(server_id=server_id, port=port, pid=self.process.pid)
        self.stopped = False
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=httpx.Timeout(30.0, connect=2.0),
            limits=httpx.Limits(max_keepalive_connections=2),
        )

    @property
    def server_id(self) -> str:
        return self.stats.server_id

    def check_alive(self) -> None:
        """Raise StackError (with the tail of its log) if the server has exited unasked."""
        code = None if self.stopped else self.process.exit_code()
        if code is not None:
            raise StackError(
                "a model server stopped unexpectedly",
                server=self.server_id,
                exit_code=code,
                log=self.process.output_tail(),
            )

    def healthy(self) -> bool:
        """The server answers ``/healthz`` (it may have no live version yet)."""
        try:
            return self.http.get("/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            self.check_alive()
            return False

    def poll_status(self) -> None:
        """Refresh ``stats.live`` / ``epoch`` / ``ready``; a server still starting is skipped."""
        if self.stopped:
            return
        try:
            r = self.http.get(f"/v1/models/{self.model}", timeout=2.0)
        except httpx.HTTPError:
            self.check_alive()
            return
        if r.status_code != 200:
            return
        body = r.json()
        self.stats.live = body.get("live")
        self.stats.epoch = body.get("epoch")
        self.stats.ready = bool(body.get("ready"))

    def stop(self) -> None:
        """SIGTERM (the server flushes its inference logs), then SIGKILL after the grace."""
        self.stopped = True
        self.http.close()
        self.process.stop(STOP_GRACE_S)
