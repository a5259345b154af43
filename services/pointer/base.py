"""The version pointer's seam: what every reader and writer of it agrees on.

A model's pointer says which checkpoint versions serve traffic: ``live``,
``canary`` (with ``canary_percent``), ``shadow``, ``previous`` (what a
rollback returns to) and ``epoch``, +1 on every change. ``history`` is the
bounded rollback history, newest first. The Redis implementation
(:mod:`services.pointer.redis`) keeps it in ``{prefix}{model}:pointer`` and
``{prefix}{model}:history`` and publishes every change on
``{prefix}{model}:versions``; the in-memory twin serves unit tests.

Hash fields are strings: ``epoch`` an integer, ``canary_percent`` a float,
a version field absent or empty meaning none; the history list holds
version names, newest first.

Readers (model servers, GC through :meth:`PointerState.references`) need only
:class:`PointerReader`; writers (CLI, gateway, guard) the full
:class:`VersionPointer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.errors import DriftloopError
from schemas.events import VersionEvent
from services.checkpoints.retention import VersionReferences


@dataclass(frozen=True)
class PointerState:
    """One model's pointer as read in one atomic step."""

    model: str
    epoch: int
    live: str | None = None
    previous: str | None = None
    canary: str | None = None
    canary_percent: float = 0.0
    shadow: str | None = None
    history: tuple[str, ...] = ()

    def references(self) -> VersionReferences:
        """What retention must keep for this pointer."""
        return VersionReferences(
            live=self.live, canary=self.canary, shadow=self.shadow, history=self.history
        )

    def versions(self) -> tuple[str, ...]:
        """Every version a server should have resident, live first, no repeats."""
        named = (self.live, self.canary, self.shadow)
        return tuple(dict.fromkeys(v for v in named if v is not None))


def pointer_key(prefix: str, model: str) -> str:
    return f"{prefix}{model}:pointer"


def history_key(prefix: str, model: str) -> str:
    return f"{prefix}{model}:history"


def channel_name(prefix: str, model: str) -> str:
    return f"{prefix}{model}:versions"


def servers_key(prefix: str, model: str) -> str:
    """Hash: server id -> JSON ``{"epoch": int, "ts": ms}``, the epoch each model
    server has applied, refreshed by the server every few seconds (``status``
    shows entries older than 30 s as stale)."""
    return f"{prefix}{model}:servers"


def outbox_key(prefix: str) -> str:
    """Stream: every pointer change's VersionEvent JSON (field ``event``), appended by
    the same script that changed the pointer, until the relay has copied it to
    ``version-events`` (:mod:`services.pointer.relay`). One stream for all models;
    the leading ``_`` keeps it apart from every model's keys (names start alphanumeric)."""
    return f"{prefix}_pointer:outbox"


def relayed_key(prefix: str) -> str:
    """Hash: ``{topic}:{partition}`` -> offset below which the relay knows every record."""
    return f"{prefix}_pointer:relayed"


def relay_lock_key(prefix: str) -> str:
    """String: the token of the one relay copying the outbox right now (with a TTL)."""
    return f"{prefix}_pointer:relay-lock"


class PointerError(DriftloopError):
    """A pointer change that was refused or could not be made."""


class StaleEpochError(PointerError):
    """The pointer changed since ``expected_epoch``: this change was not made."""


class PointerLostError(PointerError):
    """Redis has no pointer for a model the durable log knows: run ``driftloop pointer restore``."""


class VersionRefusedError(PointerError):
    """The version cannot serve: absent from the store, not verified, or quarantined."""


class PointerUnavailableError(PointerError):
    """Redis (or the log) could not be read or written: nothing can be told."""


class VersionCheck(Protocol):
    """Decides whether a version may be made live, canary or shadow.

    Called by the pointer before every change that names a version (the
    target of promote and rollback, a new canary or shadow); raises
    :class:`VersionRefusedError` saying why not.
    """

    def check(self, model: str, version: str) -> None: ...


class VersionLog(Protocol):
    """The durable log of pointer changes (the ``version-events`` topic), as pointers read it."""

    def latest(self, model: str) -> VersionEvent | None:
        """The event with the highest epoch for ``model``, or None if the log has none.

        An exception means "cannot tell"; the change that asked is refused.
        """
        ...


class PointerReader(Protocol):
    """Reads pointers. An exception means "cannot tell", never "no pointer"."""

    def get(self, model: str) -> PointerState | None:
        """The model's pointer, or None if it has never been set."""
        ...


class VersionPointer(PointerReader, Protocol):
    """Reads and changes pointers; every change is one compare-and-set on ``epoch``.

    ``expected_epoch`` None means "whatever it is now"; otherwise a change made
    since then refuses this one (:class:`PointerError`). Each call returns
    the :class:`~schemas.events.VersionEvent` it recorded.
    """

    def promote(
        self,
        model: str,
        version: str,
        *,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent: ...

    def rollback(
        self,
        model: str,
        *,
        to: str | None = None,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent: ...

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
        """``version`` None clears the canary."""
        ...

    def set_shadow(
        self,
        model: str,
        version: str | None,
        *,
        actor: str,
        reason: str = "",
        expected_epoch: int | None = None,
    ) -> VersionEvent:
        """``version`` None clears the shadow."""
        ...

    def references(self, model: str) -> VersionReferences:
        """:class:`~services.checkpoints.retention.ReferenceSource` for GC."""
        ...
