"""The in-memory twin of :class:`~services.pointer.redis.RedisPointer`, for unit tests.

:class:`InMemoryPointer` makes the same changes with the same rules (both
subclass :class:`~services.pointer.writer.PointerWriter`); its compare-and-set
is a lock. Like Redis it keeps an outbox of events not yet in the durable log
and a record of what it published; :meth:`InMemoryPointer.relay_pending`
moves the outbox into an :class:`InMemoryVersionLog` (idempotently, by event
id), and :meth:`InMemoryPointer.lose_everything` plays Redis losing its data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from schemas.events import VersionEvent
from services.pointer import transitions
from services.pointer.base import PointerState, VersionCheck
from services.pointer.writer import PointerWriter


class InMemoryVersionLog:
    """A :class:`~services.pointer.base.VersionLog` in a list (the ``version-events`` twin)."""

    def __init__(self) -> None:
        self.events: list[VersionEvent] = []
        self._lock = threading.Lock()

    def append(self, event: VersionEvent) -> bool:
        """Add ``event`` unless one with its id is there; True when added."""
        with self._lock:
            if any(e.event_id == event.event_id for e in self.events):
                return False
            self.events.append(event)
            return True

    def latest(self, model: str) -> VersionEvent | None:
        with self._lock:
            mine = [e for e in self.events if e.model == model]
        return max(mine, key=lambda e: e.epoch) if mine else None

    def latest_all(self) -> dict[str, VersionEvent]:
        with self._lock:
            events = list(self.events)
        out: dict[str, VersionEvent] = {}
        for e in events:
            if e.model not in out or e.epoch > out[e.model].epoch:
                out[e.model] = e
        return out


class InMemoryPointer(PointerWriter):
    """Pointers in a dict; see :class:`~services.pointer.writer.PointerWriter` for the rules."""

    def __init__(
        self,
        *,
        history_depth: int = 3,
        check: VersionCheck | None = None,
        log: InMemoryVersionLog | None = None,
    ) -> None:
        super().__init__(history_depth=history_depth, check=check, log=log)
        self.durable: InMemoryVersionLog | None = log
        self._states: dict[str, PointerState] = {}
        self._lock = threading.Lock()
        #: Events stored but not yet relayed to the log, oldest first.
        self.outbox: list[VersionEvent] = []
        #: Every event published on a model's channel, in order.
        self.published: list[VersionEvent] = []
        #: Called with each published event (a model server's subscription).
        self.subscribers: list[Callable[[VersionEvent], None]] = []

    def get(self, model: str) -> PointerState | None:
        with self._lock:
            return self._states.get(model)

    def _store(self, change: transitions.Change) -> bool:
        with self._lock:
            cur = self._states.get(change.after.model)
            if (cur.epoch if cur else 0) != (change.before.epoch if change.before else 0):
                return False
            self._states[change.after.model] = change.after
            self.outbox.append(change.event)
            self.published.append(change.event)
        for subscriber in list(self.subscribers):
            subscriber(change.event)
        return True

    def restore(self, event: VersionEvent) -> bool:
        """Write the pointer ``event`` describes unless this one has an equal or higher epoch."""
        with self._lock:
            cur = self._states.get(event.model)
            if cur is not None and cur.epoch >= event.epoch:
                return False
            self._states[event.model] = transitions.state_of(event)
            self.published.append(event)
        for subscriber in list(self.subscribers):
            subscriber(event)
        return True

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._states)

    def relay_pending(self) -> int:
        """Copy the outbox to the log; returns how many events were new to it."""
        if self.durable is None:
            return 0
        with self._lock:
            pending, self.outbox = self.outbox, []
        return sum(self.durable.append(e) for e in pending)

    def lose_everything(self) -> None:
        """Forget every pointer and the outbox, as a flushed Redis would."""
        with self._lock:
            self._states.clear()
            self.outbox.clear()
