"""Where the trainer's checkpoints go: the :class:`CheckpointSink` seam.

The trainer hands a :class:`TrainerSnapshot` (live model objects, river
metric/detector objects, a JSON trainer document and the manifest facts) to
``sink.save``; on start it asks ``sink.restore_latest`` for the newest one.
The real sink writes through the checkpoint store; :class:`InMemorySink`
keeps deep copies, for unit tests and in-memory runs.
"""

from __future__ import annotations

import copy
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


class CheckpointSink(Protocol):
    """The checkpoint store as the trainer sees it."""

    def save(self, snapshot: TrainerSnapshot) -> str:
        """Commit a checkpoint; return its version id once the manifest is committed.

        Called from the trainer's thread at a micro-batch boundary. A failure
        raises (CheckpointError) and the trainer keeps training; the same
        trigger fires again at the next boundary.
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
    """A sink keeping deep copies of every snapshot, newest last (tests, in-memory runs)."""

    def __init__(self) -> None:
        self.snapshots: list[TrainerSnapshot] = []
        self.versions: list[str] = []

    def save(self, snapshot: TrainerSnapshot) -> str:
        copied = copy.deepcopy(snapshot)
        self.snapshots.append(copied)
        version = f"{snapshot.model}-{len(self.snapshots):06d}"
        self.versions.append(version)
        return version

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
        """Trigger of each saved snapshot, oldest first."""
        return [s.trigger for s in self.snapshots]
