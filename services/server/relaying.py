"""A model server's share of the pointer outbox relay (see :mod:`services.pointer.relay`).

Every pointer change waits in the Redis outbox until some relay has copied it
to ``version-events``; the CLI relays right after its change, and model
servers (this module) and workers (``streams.worker.install_relay``) relay
whatever a CLI that died in between left pending. :class:`PeriodicRelay`
runs :meth:`~services.pointer.relay.OutboxRelay.relay_pending` every
``DRIFTLOOP_SERVER_RELAY_INTERVAL_S`` seconds on a thread of its own (the
follower starts it), so a broker or Redis that does not answer delays
neither a request nor a pointer check: the failure is logged and counted,
and the next interval tries again (the entries stay in the outbox).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from services.pointer.relay import RelayResult
from services.server.metrics import ServerMetrics

log = logging.getLogger(__name__)


class OutboxRelayer(Protocol):
    """What :class:`PeriodicRelay` runs (:class:`~services.pointer.relay.OutboxRelay`)."""

    def relay_pending(self, *, wait_s: float = 0.0) -> RelayResult: ...


class PeriodicRelay:
    """Relays the outbox once now, then every ``interval_s`` until stopped."""

    def __init__(
        self,
        relay: OutboxRelayer,
        *,
        interval_s: float,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.relay = relay
        self.interval_s = interval_s
        self.metrics = metrics
        #: The last run's error, None once a run succeeded.
        self.last_error: str | None = None

    def run_once(self) -> RelayResult | None:
        """One relay; None when it failed (logged and counted, never raised)."""
        try:
            result = self.relay.relay_pending()
        except Exception as exc:  # noqa: BLE001 - Redis or broker away (any client error): the entries stay pending, the next interval retries; the server keeps serving
            if self.last_error is None:
                log.warning(
                    "pointer outbox relay failed (retried every %ss): %s", self.interval_s, exc
                )
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.metrics is not None:
                self.metrics.relay_failures.inc()
            return None
        if self.last_error is not None:
            log.info("pointer outbox relay works again")
        self.last_error = None
        if result.sent or result.duplicates:
            log.info(
                "relayed %d pointer changes to version-events (%d already there)",
                result.sent,
                result.duplicates,
            )
        if self.metrics is not None and result.sent:
            self.metrics.relayed.inc(result.sent)
        return result

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set (the follower's ``pointer-relay`` thread)."""
        while not stop.is_set():
            self.run_once()
            stop.wait(self.interval_s)
