"""Settings of a model server (``DRIFTLOOP_SERVER_*``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import limits as L


def default_spool_root() -> Path:
    """``$XDG_STATE_HOME/driftloop/spool`` (default ``~/.local/state/driftloop/spool``)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "driftloop" / "spool"


def default_server_id() -> str:
    """``{host}-{pid}``: unique per process on a machine, readable in ``driftloop status``."""
    suffix = f"-{os.getpid()}"
    return socket.gethostname()[: L.MAX_ID_CHARS - len(suffix)] + suffix


class ServerConfig(BaseSettings):
    """How a model server runs.

    ``resident_versions`` (K): checkpoint versions kept loaded per model,
    those the pointer names plus the most recently used others, so a rollback
    to one of them is a switch, not a load. ``poll_interval_s``: how often the
    pointer's epoch is read even without a Redis notification (the catch-up
    that cannot miss a change). ``report_interval_s``: how often the applied
    epoch is written to the pointer's ``servers`` hash. ``relay_interval_s``:
    how often the server copies pointer changes left in the Redis outbox to
    ``version-events`` (:mod:`services.server.relaying`). Request limits:
    ``max_body_bytes`` (413 above), ``max_instances`` per predict call,
    ``max_feedback_events`` per feedback call (422 above).
    ``feedback_timeout_s``: how long ``POST /v1/feedback`` waits for the
    broker's (or the spool's) acknowledgement before answering 503.
    ``spool_dir``: where events wait while the broker is away (one server per
    directory); default ``{default_spool_root()}/{server_id}``, so give each
    replica a stable ``server_id`` (or its own ``spool_dir``) for a restarted
    replica to send what its predecessor spooled.
    ``log_inferences`` (default true): publish an InferenceLog per prediction;
    false serves without them (nothing of that traffic can train or be
    attributed; ``benchmarks.predict`` uses it to price the logging).
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_SERVER_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: Named in every InferenceLog (``server``) and in the pointer's servers hash.
    server_id: str = Field(
        default_factory=default_server_id, min_length=1, max_length=L.MAX_ID_CHARS
    )
    resident_versions: int = Field(default=4, ge=1, le=64)
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    report_interval_s: float = Field(default=3.0, gt=0, le=60)
    relay_interval_s: float = Field(default=5.0, gt=0, le=300)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_instances: int = Field(default=1000, ge=1, le=100_000)
    max_feedback_events: int = Field(default=1000, ge=1, le=100_000)
    feedback_timeout_s: float = Field(default=5.0, gt=0, le=120)
    spool_dir: Path | None = None
    log_inferences: bool = True
    log_level: str = "info"

    @property
    def spool_path(self) -> Path:
        """The spool directory in force."""
        return (
            self.spool_dir if self.spool_dir is not None else default_spool_root() / self.server_id
        )
