"""Following the version pointer: a fast hint plus a catch-up that cannot miss a change.

:class:`PointerFollower` keeps each model's :class:`~.registry.ModelRegistry`
at the pointer's newest epoch. A message on the model's Redis channel (see
:class:`~.redis_pointer.RedisHints`) carries the VersionEvent, so the whole
pointer after the change: it is applied on the hint thread at once, with no
read and no hand-over to another thread (the rollback's fast path). A hint
without a state wakes the follower thread, which reads the pointer (one
:meth:`PointerReader.get`); and whatever the channel does, it reads it every
``poll_interval_s``: a server that was disconnected, or missed a message,
catches up within one interval of Redis answering again. Both paths go
through the same rules, one at a time.

- An epoch at or below the applied one is never applied (the registry checks).
- A pointer that cannot be read (Redis down, paused, a field that does not
  parse) changes nothing: the last applied versions keep serving and the error
  is kept in :attr:`FollowStatus.pointer_error`.
- A pointer that is gone (Redis restarted empty) changes nothing either: the
  pointer is restored from ``version-events`` with its epoch, and the server
  applies what is newer than what it serves.
- A version that fails to load keeps the old one serving; the same epoch is
  tried again after a backoff (``retry_s``, doubling up to 60 s), since the
  cause may pass (a cold tier that did not answer).

Every ``report_interval_s`` the applied epoch of each model is written through
the :class:`EpochReporter` (the ``servers`` hash ``driftloop status`` reads).

A ``relay`` (:class:`~.relaying.PeriodicRelay`: the pointer outbox copied to
``version-events``) runs on a thread of its own, so a broker that does not
answer never delays a pointer check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from services.pointer.base import PointerReader, PointerState
from services.server.registry import ModelRegistry

log = logging.getLogger(__name__)


class HintSource(Protocol):
    """Tells the follower that a model's pointer may have changed."""

    def run(
        self, on_hint: Callable[[str, PointerState | None], None], stop: threading.Event
    ) -> None:
        """Call ``on_hint(model, state)`` per notification until ``stop`` is set;
        ``state`` is the pointer the notification carried, or None ("look")."""
        ...


class Background(Protocol):
    """Work that runs beside the follower until ``stop`` is set (the outbox relay)."""

    def run(self, stop: threading.Event) -> None: ...


class EpochReporter(Protocol):
    """Records the epoch this server applied for a model."""

    def report(self, model: str, epoch: int) -> None: ...

    def withdraw(self, model: str) -> None: ...


@dataclass
class FollowStatus:
    """What the follower last saw of one model's pointer."""

    pointer_error: str | None = None
    pointer_missing: bool = False
    last_check_ms: int | None = None
    retry_at: float = 0.0
    retry_s: float = 0.0
    failed_epoch: int | None = None


class PointerFollower:
    """Keeps registries at the pointer's newest epoch (see the module notes)."""

    def __init__(
        self,
        registries: Mapping[str, ModelRegistry],
        reader: PointerReader,
        *,
        poll_interval_s: float = 1.0,
        hints: HintSource | None = None,
        reporter: EpochReporter | None = None,
        report_interval_s: float = 3.0,
        relay: Background | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registries = dict(registries)
        self.reader = reader
        self.poll_interval_s = poll_interval_s
        self.hints = hints
        self.reporter = reporter
        self.report_interval_s = report_interval_s
        self.relay = relay
        self.clock = clock
        self.status = {m: FollowStatus() for m in self.registries}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._consider_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._last_report = float("-inf")

    # -- one step (what the thread loops over; unit tests call it directly) --------------------

    def check(self, model: str) -> bool:
        """Read ``model``'s pointer once and apply it if newer; True when it applied."""
        status = self.status[model]
        status.last_check_ms = time.time_ns() // 1_000_000
        try:
            state = self.reader.get(model)
        except Exception as exc:  # noqa: BLE001 - "cannot tell" from any reader (Redis down, bad field) keeps serving what is applied
            if status.pointer_error is None:
                log.warning("model %s: pointer unreadable, serving what is applied: %s", model, exc)
            status.pointer_error = f"{type(exc).__name__}: {exc}"
            return False
        if status.pointer_error is not None:
            log.info("model %s: pointer readable again", model)
        status.pointer_error = None
        status.pointer_missing = state is None
        if state is None:
            return False
        return self.consider(model, state)

    def consider(self, model: str, state: PointerState) -> bool:
        """Apply ``state`` (read, or carried by a hint) if it is newer than what
        is applied and not a change that failed a moment ago; True when applied."""
        with self._consider_lock:
            return self._consider(model, state)

    def _consider(self, model: str, state: PointerState) -> bool:
        registry = self.registries[model]
        status = self.status[model]
        applied = registry.epoch
        if applied is not None and state.epoch <= applied:
            return False
        if status.failed_epoch == state.epoch and self.clock() < status.retry_at:
            return False  # that change failed to load a moment ago: wait for the backoff
        if registry.apply(state):
            status.failed_epoch, status.retry_s = None, 0.0
            return True
        if registry.last_error is not None and registry.last_error.epoch == state.epoch:
            status.failed_epoch = state.epoch
            status.retry_s = min(max(status.retry_s * 2, 1.0), 60.0)
            status.retry_at = self.clock() + status.retry_s
        return False

    def check_all(self) -> None:
        for model in self.registries:
            self.check(model)

    def report(self) -> None:
        """Write each model's applied epoch through the reporter (errors are logged)."""
        if self.reporter is None:
            return
        for model, registry in self.registries.items():
            epoch = registry.epoch
            if epoch is None:
                continue
            try:
                self.reporter.report(model, epoch)
            except Exception as exc:  # noqa: BLE001 - a report that fails is retried next interval; serving goes on
                log.debug("model %s: epoch report failed: %s", model, exc)

    # -- threads ------------------------------------------------------------------------------

    def hint(self, model: str, state: PointerState | None = None) -> None:
        """Called by the hint source: apply the pointer it carried, here and
        now, or have the follower thread read it."""
        if state is None or model not in self.registries or state.model != model:
            self._wake.set()
            return
        if not self.consider(model, state):
            self._wake.set()  # not applied (older, or failed): the read path decides

    def start(self) -> None:
        """Check every model once, then follow on background threads."""
        self.check_all()
        self._threads = [threading.Thread(target=self._loop, name="pointer-follower", daemon=True)]
        if self.hints is not None:
            hints = self.hints
            self._threads.append(
                threading.Thread(
                    target=hints.run,
                    args=(self.hint, self._stop),
                    name="pointer-hints",
                    daemon=True,
                )
            )
        if self.relay is not None:
            self._threads.append(
                threading.Thread(
                    target=self.relay.run, args=(self._stop,), name="pointer-relay", daemon=True
                )
            )
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.check_all()
            if self.clock() - self._last_report >= self.report_interval_s:
                self._last_report = self.clock()
                self.report()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop following and withdraw this server's epoch reports."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout_s)
        if self.reporter is not None:
            for model in self.registries:
                try:
                    self.reporter.withdraw(model)
                except Exception as exc:  # noqa: BLE001 - leaving: a stale entry ages out in status
                    log.debug("model %s: epoch withdraw failed: %s", model, exc)
