"""The real checkpoint sink: trainer snapshots through the :class:`Checkpointer`.

One checkpoint of a trained model holds:

- torch models: the module and optimizer state (safetensors groups ``model``
  and ``optimizer`` plus their JSON documents), by the state layer's
  ``TorchAdapter``;
- one river blob (``river.pkl``, loaded back only through the restricted
  unpickler) with the prequential metrics, the drift detectors and, for river
  models, the model itself;
- the JSON document ``trainer``: seen example ids, digest, counters, schedule,
  offsets;
- the manifest facts: step, examples seen, trigger, metrics, key metric,
  offsets, config, example digest and ``extra`` (schedule in force, drift
  summary).

:meth:`CheckpointerSink.save` returns only once the manifest is committed, so
the caller may publish its CheckpointEvent right after.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import CheckpointError, CheckpointNotFoundError
from services.checkpoints.checkpointer import Checkpointer
from services.checkpoints.state.river_state import RiverAdapter as RiverState
from services.checkpoints.state.river_state import restore_river
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.state.torch_state import TorchAdapter as TorchState
from services.learning.adapters import ModelAdapter
from services.learning.sink import RestoredTrainer, TrainerSnapshot

TRAINER_DOCUMENT = "trainer"


class CheckpointerSink:
    """A :class:`~services.learning.sink.CheckpointSink` over a :class:`Checkpointer`.

    Parameters
    ----------
    checkpointer
        The checkpointer (and through it, the store) to write to.
    """

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer
        #: The manifest of the last committed save, for the CheckpointEvent.
        self.last_manifest: Any = None

    @staticmethod
    def _capture(snapshot: TrainerSnapshot) -> CheckpointState:
        objects = snapshot.model_objects
        river: dict[str, Any] = dict(snapshot.river_objects)
        if "module" in objects:
            state = TorchState(
                objects["module"], objects["optimizer"], capture_rngs=False
            ).capture()
        else:
            state = CheckpointState()
            river["model"] = objects["model"]
        state.blobs.update(RiverState(river, capture_rngs=False).capture().blobs)
        state.documents[TRAINER_DOCUMENT] = snapshot.trainer_state
        return state

    def save(self, snapshot: TrainerSnapshot) -> str:
        future = self.checkpointer.save(
            snapshot.model,
            self._capture(snapshot),
            step=snapshot.step,
            examples_seen=snapshot.examples_seen,
            trigger=snapshot.trigger,  # type: ignore[arg-type]  # names come from triggers.py
            metrics=snapshot.metrics,
            key_metric=snapshot.key_metric,
            offsets=snapshot.offsets,
            config=snapshot.config,
            example_digest=snapshot.example_digest,
            extra={**snapshot.extra, "reason": snapshot.reason},
        )
        manifest = future.result()
        self.last_manifest = manifest
        return str(manifest.version)

    def restore_latest(self, model: str, adapter: ModelAdapter) -> RestoredTrainer | None:
        try:
            loaded = self.checkpointer.load(model)
        except CheckpointNotFoundError:
            return None
        state = loaded.state
        if TRAINER_DOCUMENT not in state.documents:
            raise CheckpointError(
                "checkpoint was not written by the online trainer",
                model=model,
                version=loaded.manifest.version,
            )
        river = restore_river(state)
        live = adapter.live_objects()
        if "module" in live:
            TorchState(live["module"], live["optimizer"], capture_rngs=False).restore(state)
        else:
            adapter.load_objects({"model": river.pop("model")})
        return RestoredTrainer(
            version=str(loaded.manifest.version),
            trainer_state=dict(state.documents[TRAINER_DOCUMENT]),
            river_objects=river,
            offsets={t: dict(p) for t, p in loaded.manifest.offsets.items()},
        )
