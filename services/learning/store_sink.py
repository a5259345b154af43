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

:meth:`CheckpointerSink.submit` returns once the state is snapshotted; the
commit runs on the checkpointer's saver thread and the returned future
completes with the manifest once it is committed (so the CheckpointEvent can
be published then), in submission order, or carries the failure.
:meth:`CheckpointerSink.restore_latest` restores the newest checkpoint that
loads completely, never silently nothing: a store whose checkpoints all fail
to load raises :class:`~schemas.errors.NoLoadableCheckpointError`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from schemas.errors import CheckpointError, NoLoadableCheckpointError
from services.checkpoints import layout
from services.checkpoints.checkpointer import Checkpointer, LoadedCheckpoint
from services.checkpoints.health import restore_order
from services.checkpoints.state.river_state import RiverAdapter as RiverState
from services.checkpoints.state.river_state import restore_river
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.state.torch_state import TorchAdapter as TorchState
from services.checkpoints.store import CheckpointStore
from services.learning.adapters import ModelAdapter
from services.learning.sink import Committed, RestoredTrainer, TrainerSnapshot

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
        #: Per model, the newest seq a ``--from-scratch`` start ignores (see :meth:`start_over`).
        self._ignore_through: dict[str, int] = {}
        #: Per model, the snapshot bytes of its last save (to decline without capturing).
        self._last_bytes: dict[str, int] = {}

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

    def submit(self, snapshot: TrainerSnapshot, *, block: bool = True) -> Future[Committed] | None:
        """Capture and snapshot ``snapshot``, commit it on the saver thread.

        With ``block=False``, None when the checkpointer would not admit a
        save of the size this model's last one had (then nothing is
        captured) or of this one's.
        """
        model = snapshot.model
        if not block and not self.checkpointer.admits(self._last_bytes.get(model, 0)):
            return None
        state = self._capture(snapshot)
        self._last_bytes[model] = state.nbytes() + sum(len(b) for b in state.blobs.values())
        inner = self.checkpointer.submit(
            model,
            state,
            block=block,
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
        if inner is None:
            return None
        outer: Future[Committed] = Future()

        def committed(done: Future[Any]) -> None:  # on the saver thread (or here if done)
            exc = done.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            manifest = done.result()
            self.last_manifest = manifest
            outer.set_result(Committed(str(manifest.version), manifest))

        inner.add_done_callback(committed)
        return outer

    def start_over(self, model: str) -> list[str]:
        """Ignore every checkpoint ``model`` has now (``--from-scratch``); returns them.

        Later restores consider only versions saved after this call, and the
        next save is a full checkpoint without a parent.
        """
        ignored = [v for v, _ in self._order(model)]
        if ignored:
            self._ignore_through[model] = max(layout.parse_seq(model, v) or 0 for v in ignored)
        self.checkpointer.resume_from(model, None)
        return ignored

    def restore_inputs(self, model: str) -> tuple[Any, ...] | None:
        """What :meth:`restore_latest` of ``model`` would read, to tell whether it changed:
        the versions it tries (newest first, with their damage) and the path, size
        and modification time of every file in the model's directory of the hot
        tier. None when that is not known (not a local :class:`CheckpointStore`, a
        file gone while listed): then nothing can be taken as unchanged.
        """
        store = self.checkpointer.store
        if not isinstance(store, CheckpointStore):
            return None
        base = store.config.root / model
        try:
            files = sorted(
                (str(path.relative_to(base)), stat.st_size, stat.st_mtime_ns)
                for path in base.rglob("*")
                if path.is_file()
                for stat in (path.stat(),)
            )
        except OSError:
            return None
        return (tuple(self._order(model)), tuple(files))

    def _order(self, model: str) -> list[tuple[str, str | None]]:
        store = self.checkpointer.store
        if isinstance(store, CheckpointStore):
            order = restore_order(store, model)
        else:  # a bare Store: only its newest checkpoint is known
            latest = store.latest(model)
            order = [] if latest is None else [(latest.version, None)]
        through = self._ignore_through.get(model)
        if through is None:
            return order
        return [(v, why) for v, why in order if (layout.parse_seq(model, v) or 0) > through]

    def restore_latest(self, model: str, adapter: ModelAdapter) -> RestoredTrainer | None:
        """Restore the newest checkpoint of ``model`` that loads completely.

        Versions are tried newest first; each one that does not load (damaged,
        a broken delta chain, a file that fails verification, a pickle the
        restricted unpickler refuses) is skipped and reported in
        :attr:`RestoredTrainer.skipped`. The next save extends the restored
        version. None when the model has no checkpoint at all.

        Raises
        ------
        NoLoadableCheckpointError
            Checkpoints exist but none of them loads (each version and why).
        """
        skipped: dict[str, str] = {}
        for version, damage in self._order(model):
            if damage is not None:
                skipped[version] = damage
                continue
            try:
                loaded, river = self._load(model, version)
            except CheckpointError as exc:
                skipped[version] = str(exc)
                continue
            break
        else:
            if skipped:
                raise NoLoadableCheckpointError(model, skipped)
            return None
        state = loaded.state
        _apply(adapter, state, river)
        self.checkpointer.resume_from(model, version)
        return RestoredTrainer(
            version=str(loaded.manifest.version),
            trainer_state=dict(state.documents[TRAINER_DOCUMENT]),
            river_objects=river,
            offsets={t: dict(p) for t, p in loaded.manifest.offsets.items()},
            skipped=skipped,
        )

    def _load(self, model: str, version: str) -> tuple[LoadedCheckpoint, dict[str, Any]]:
        """Load and decode everything of one checkpoint; raises CheckpointError, changes nothing."""
        loaded = self.checkpointer.load(model, version)
        if TRAINER_DOCUMENT not in loaded.state.documents:
            raise CheckpointError(
                "checkpoint was not written by the online trainer",
                model=model,
                version=loaded.manifest.version,
            )
        return loaded, restore_river(loaded.state)


def load_into(adapter: ModelAdapter, state: CheckpointState) -> dict[str, Any]:
    """Put the model of a loaded checkpoint's ``state`` into ``adapter``, as a restore does.

    Torch: the module and optimizer state (RNGs are left alone); river: the
    model from the river blob, loaded through the restricted unpickler.
    Returns the other river objects of the checkpoint (metrics, drift
    detectors). For a process that only reads, e.g. a model server::

        loaded = open_reader(store_config).load(model, version)  # verified
        load_into(adapter, loaded.state)

    Raises
    ------
    CheckpointError
        The state holds no river objects, or they do not unpickle under the
        allow-list (raised before the adapter is touched).
    """
    river = restore_river(state)
    _apply(adapter, state, river)
    return river


def _apply(adapter: ModelAdapter, state: CheckpointState, river: dict[str, Any]) -> None:
    live = adapter.live_objects()
    if "module" in live:
        TorchState(live["module"], live["optimizer"], capture_rngs=False).restore(state)
    else:
        adapter.load_objects({"model": river.pop("model")})
