"""What every :class:`~services.pointer.base.VersionPointer` implementation shares.

:class:`PointerWriter` implements the four changes once: check the version
(:class:`~services.pointer.base.VersionCheck`), read the pointer, refuse if
Redis lost it (below), compute the change (:mod:`.transitions`), and store
it with one compare-and-set on ``epoch`` (:meth:`PointerWriter._store`, which
each implementation provides). With ``expected_epoch`` None a lost race is
retried on the new state; with an ``expected_epoch`` it is refused
(:class:`~services.pointer.base.StaleEpochError`), so a delayed or stale
request never overwrites a newer decision.

How "Redis lost the pointer" is told from "a new model"
-------------------------------------------------------
Only the durable log can tell, because a flush takes every Redis key with it
(a marker in Redis would be flushed too). So when a change finds no pointer,
it asks the :class:`~services.pointer.base.VersionLog` (the
``version-events`` topic) for the model's latest event before creating
epoch 1: if the log has one, the change is refused with
:class:`~services.pointer.base.PointerLostError` until ``driftloop pointer
restore`` has written the pointer (and its epoch) back. That lookup costs
one read of the topic, only for a model without a pointer. Epoch 1 of a
new model is itself a compare-and-set against "no pointer", so two writers
creating the same model cannot both win. Changes still in the outbox when
Redis lost its data are lost with it (they were never in the log); run
Redis with persistence (AOF) to narrow that window.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from schemas.events import VersionEvent
from services.checkpoints.retention import VersionReferences
from services.pointer import transitions
from services.pointer.base import (
    PointerError,
    PointerLostError,
    PointerState,
    StaleEpochError,
    VersionCheck,
    VersionLog,
)

#: Attempts of a change with ``expected_epoch`` None before it gives up.
MAX_ATTEMPTS = 50
#: Seconds :meth:`PointerWriter.references` trusts the log's "no such model".
LOG_CACHE_S = 60.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class PointerWriter(ABC):
    """The changes of :class:`~services.pointer.base.VersionPointer`, on any storage.

    Parameters
    ----------
    history_depth
        Versions kept in the rollback history: the store's
        ``rollback_depth`` (``DRIFTLOOP_STORE_ROLLBACK_DEPTH``), so the
        pointer keeps exactly what retention protects.
    check
        Refuses versions that cannot serve; None checks nothing (unit tests).
    log
        The durable log consulted when a pointer is missing (module
        docstring); None means a missing pointer is always a new model —
        only for tests and single-process demos.
    """

    def __init__(
        self, *, history_depth: int, check: VersionCheck | None, log: VersionLog | None
    ) -> None:
        if history_depth < 0:
            raise PointerError("history depth must be >= 0", history_depth=history_depth)
        self.history_depth = history_depth
        self.check = check
        self.log = log
        self._seen: set[str] = set()
        self._unknown_until: dict[str, float] = {}

    @abstractmethod
    def get(self, model: str) -> PointerState | None: ...

    @abstractmethod
    def _store(self, change: transitions.Change) -> bool:
        """Store ``change`` if the pointer's epoch is still ``change.before``'s
        (0: no pointer), with its event appended to the outbox and published,
        all in one atomic step; False when the epoch moved."""

    def references(self, model: str) -> VersionReferences:
        """:class:`~services.checkpoints.retention.ReferenceSource` for GC and tiering.

        Raises when the pointer cannot be read, which aborts GC before it
        deletes anything — and when it is *lost*: a model without a pointer
        that this object has seen with one, or that the log knows
        (:class:`~services.pointer.base.PointerLostError`), so GC after a
        Redis flush cannot delete the live version before the restore. The
        log's "never heard of it" is trusted for :data:`LOG_CACHE_S` seconds,
        so GC after every commit of a model nobody promoted does not read
        the topic each time.
        """
        state = self.get(model)
        if state is not None:
            self._seen.add(model)
            return state.references()
        if model in self._seen:
            raise PointerLostError(
                "the pointer of this model vanished from Redis: run `driftloop pointer restore`",
                model=model,
            )
        unknown_until = self._unknown_until.get(model, 0.0)
        if time.monotonic() >= unknown_until:
            self._refuse_if_lost(model)
            self._unknown_until[model] = time.monotonic() + LOG_CACHE_S
        return VersionReferences()

    def promote(
        self,
        model: str,
        version: str,
        *,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent:
        self._check(model, version)
        return self._change(
            model,
            expected_epoch,
            lambda cur: transitions.promote(
                cur,
                model,
                version,
                depth=self.history_depth,
                actor=actor,
                reason=reason,
                now_ms=now_ms(),
            ),
        )

    def rollback(
        self,
        model: str,
        *,
        to: str | None = None,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent:
        if to is not None:
            self._check(model, to)

        def compute(cur: PointerState | None) -> transitions.Change:
            change = transitions.rollback(
                cur, model, to, actor=actor, reason=reason, now_ms=now_ms()
            )
            if to is None and change.after.live is not None:
                self._check(model, change.after.live)  # the target is known only now
            return change

        return self._change(model, expected_epoch, compute)

    def set_canary(
        self,
        model: str,
        version: str | None,
        percent: float = 0.0,
        *,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent:
        if version is not None:
            self._check(model, version)
        return self._change(
            model,
            expected_epoch,
            lambda cur: transitions.set_canary(
                cur, model, version, percent, actor=actor, reason=reason, now_ms=now_ms()
            ),
        )

    def set_shadow(
        self,
        model: str,
        version: str | None,
        *,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent:
        if version is not None:
            self._check(model, version)
        return self._change(
            model,
            expected_epoch,
            lambda cur: transitions.set_shadow(
                cur, model, version, actor=actor, reason=reason, now_ms=now_ms()
            ),
        )

    def _check(self, model: str, version: str) -> None:
        if self.check is not None:
            self.check.check(model, version)

    def _change(
        self,
        model: str,
        expected_epoch: int | None,
        compute: Callable[[PointerState | None], transitions.Change],
    ) -> VersionEvent:
        checked_log = False
        for _ in range(MAX_ATTEMPTS):
            cur = self.get(model)
            epoch = cur.epoch if cur is not None else 0
            if expected_epoch is not None and epoch != expected_epoch:
                raise StaleEpochError(
                    "the pointer changed since the expected epoch; nothing was changed",
                    model=model,
                    expected_epoch=expected_epoch,
                    epoch=epoch,
                )
            if cur is None and not checked_log:
                self._refuse_if_lost(model)
                checked_log = True
            change = compute(cur)
            if self._store(change):
                return change.event
        raise PointerError(
            "the pointer kept changing under this change; nothing was changed",
            model=model,
            attempts=MAX_ATTEMPTS,
        )

    def _refuse_if_lost(self, model: str) -> None:
        if self.log is None:
            return
        last = self.log.latest(model)
        if last is not None:
            raise PointerLostError(
                "Redis has no pointer for this model but version-events has its changes: "
                "run `driftloop pointer restore` first; nothing was changed or deleted",
                model=model,
                logged_epoch=last.epoch,
            )
