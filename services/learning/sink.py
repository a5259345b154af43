"""Where the trainer's checkpoints go: the :class:`CheckpointSink` seam.

The trainer hands a :class:`TrainerSnapshot` (live model objects, river
metric/detector objects, a JSON trainer document and the manifest facts) to
``sink.submit``, which snapshots it and returns a future that completes when
the checkpoint is committed (or fails); on start it asks
``sink.restore_latest`` for the newest one. The real sink
(:class:`~services.learning.store_sink.CheckpointerSink`) commits through the
checkpoint store on a background thread; :class:`InMemorySink` keeps deep
copies, for unit tests and in-memory runs, and can hold its commits until
told (to test what the trainer does while a commit is pending or fails).
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.learning.adapters import ModelAdapter


@dataclass(frozen=True)
class TrainerSnapshot:
    """Everything one checkpoint holds, as of the last micro-batch boundary.

    ``model_objects`` and ``river_objects`` are *live* objects: a sink must
    capture (copy or serialise) them before ``save`` returns, because training
    continues right after.

    Attributes
    ----------
    trainer_state
        JSON document: seen example ids (oldest first), digest accumulator,
        counters, the schedule in force, the config digest.
    river_objects
        River objects to pickle: prequential metrics and drift detectors.
    """

    model: str
    trigger: str
    reason: str
    step: int
    examples_seen: int
    offsets: dict[str, dict[str, int]]
    metrics: dict[str, float]
    key_metric: str | None
    example_digest: str
    config: dict[str, Any]
    extra: dict[str, Any]
    trainer_state: dict[str, Any]
    model_objects: dict[str, Any]
    river_objects: dict[str, Any]


@dataclass(frozen=True)
class RestoredTrainer:
    """What :meth:`CheckpointSink.restore_latest` gives back besides the model
    state it loaded into the adapter."""

    version: str
    trainer_state: dict[str, Any]
    river_objects: dict[str, Any]
    offsets: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Newer versions that did not load, with why (a fallback restore when not empty).
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Committed:
    """A committed checkpoint: its version and, from a store, its manifest."""

    version: str
    manifest: Any = None


class CheckpointSink(Protocol):
    """The checkpoint store as the trainer sees it."""

    def submit(self, snapshot: TrainerSnapshot, *, block: bool = True) -> Future[Committed] | None:
        """Snapshot ``snapshot`` now and commit it (in the background); the future
        completes once the manifest is committed, or carries the failure.

        Called from the trainer's thread at a micro-batch boundary; commits
        complete in submission order. Returns after the snapshot is taken: the
        live objects may change right after. While earlier commits hold the
        sink's budget, ``block=True`` waits for room and ``block=False``
        returns None at once without taking anything. A failed commit is
        reported only through its future.

        Raises
        ------
        CheckpointError, SchemaError
            The snapshot could not be taken (nothing was submitted).
        """
        ...

    def restore_latest(self, model: str, adapter: ModelAdapter) -> RestoredTrainer | None:
        """Load the newest checkpoint of ``model`` that loads completely into
        ``adapter`` and return the rest of its state (newer versions that did not
        load in ``skipped``); None when the model has no checkpoint yet.

        Raises :class:`~schemas.errors.NoLoadableCheckpointError` when the model
        has checkpoints but none of them loads."""
        ...


class InMemorySink:
    """A sink keeping deep copies of every committed snapshot, newest last (tests, in-memory runs).

    Commits complete at once, unless ``hold=True``: then at most one commit is
    pending at a time (a second ``submit`` waits, or returns None with
    ``block=False``) until :meth:`release` commits or fails it, from any
    thread.
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.snapshots: list[TrainerSnapshot] = []
        self.versions: list[str] = []
        self._pending: deque[tuple[TrainerSnapshot, Future[Committed]]] = deque()
        self._cond = threading.Condition()
        #: Submitters waiting for room now (tests poll it).
        self.waiting = 0

    def submit(self, snapshot: TrainerSnapshot, *, block: bool = True) -> Future[Committed] | None:
        with self._cond:
            while self.hold and self._pending:
                if not block:
                    return None
                self.waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self.waiting -= 1
            future: Future[Committed] = Future()
            self._pending.append((copy.deepcopy(snapshot), future))
            if not self.hold:
                self._commit_oldest(None)
        return future

    @property
    def pending(self) -> int:
        """Commits submitted and not yet released."""
        with self._cond:
            return len(self._pending)

    def release(self, error: BaseException | None = None) -> None:
        """Commit the oldest pending snapshot, or fail it with ``error``."""
        with self._cond:
            self._commit_oldest(error)
            self._cond.notify_all()

    def _commit_oldest(self, error: BaseException | None) -> None:
        copied, future = self._pending.popleft()
        if error is not None:
            future.set_exception(error)
            return
        self.snapshots.append(copied)
        version = f"{copied.model}-{len(self.snapshots):06d}"
        self.versions.append(version)
        future.set_result(Committed(version))

    def restore_latest(self, model: str, adapter: ModelAdapter) -> RestoredTrainer | None:
        for version, snap in zip(reversed(self.versions), reversed(self.snapshots), strict=True):
            if snap.model == model:
                adapter.load_objects(copy.deepcopy(snap.model_objects))
                return RestoredTrainer(
                    version=version,
                    trainer_state=copy.deepcopy(snap.trainer_state),
                    river_objects=copy.deepcopy(snap.river_objects),
                    offsets=copy.deepcopy(snap.offsets),
                )
        return None

    def triggers(self) -> list[str]:
        """Trigger of each committed snapshot, oldest first."""
        return [s.trigger for s in self.snapshots]
