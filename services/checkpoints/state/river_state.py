"""Capture and restore of river models and drift detectors.

River objects have no tensor form: they are pickled into one blob
(``"river.pkl"``) by :func:`.safe_pickle.safe_dumps`, which refuses state the
restricted unpickler could not load back, and loaded back only through
:func:`.safe_pickle.safe_loads`, after the checkpointer has checked the blob's
sha256 against the manifest (and the state digest covers it).
"""

from __future__ import annotations

from typing import Any

from schemas.errors import CheckpointError
from services.checkpoints.state.rng import capture_rng, restore_rng
from services.checkpoints.state.safe_pickle import safe_dumps, safe_loads
from services.checkpoints.state.state import CheckpointState

#: Name of the blob holding the pickled river objects.
RIVER_BLOB = "river.pkl"


class RiverAdapter:
    """Named river objects (a model, its drift detectors, ...) of one online learner.

    Parameters
    ----------
    objects:
        ``{name: river object}``, e.g. ``{"model": pipeline, "adwin": ADWIN()}``.
        Restoring replaces the values of this dict with the loaded objects
        (river objects are rebuilt, not updated in place).
    capture_rngs:
        Also record the process-global RNG states (river models keep their
        own ``random.Random`` inside the pickle).
    """

    def __init__(self, objects: dict[str, Any], *, capture_rngs: bool = True) -> None:
        self.objects = objects
        self.capture_rngs = capture_rngs

    def capture(self) -> CheckpointState:
        """Pickle the objects now; the bytes are the snapshot.

        Raises
        ------
        CheckpointError
            When the objects name a class outside the unpickler's allow-list
            (the checkpoint could be written but not loaded).
        """
        state = CheckpointState(blobs={RIVER_BLOB: safe_dumps(self.objects)})
        if self.capture_rngs:
            state.rng = capture_rng()
        return state

    def restore(self, state: CheckpointState) -> dict[str, Any]:
        """Load the objects through the restricted unpickler into :attr:`objects` and return them.

        Raises
        ------
        CheckpointError
            When the state holds no river blob.
        UnsafePickleError
            When the restricted unpickler refuses the blob (a CheckpointCorruptError).
        """
        objects = restore_river(state)
        self.objects.clear()
        self.objects.update(objects)
        if self.capture_rngs and state.rng:
            restore_rng(state.rng)
        return self.objects


def restore_river(state: CheckpointState) -> dict[str, Any]:
    """Return the river objects held by ``state``, loaded through the restricted unpickler."""
    if RIVER_BLOB not in state.blobs:
        raise CheckpointError("checkpoint holds no river objects", path=RIVER_BLOB)
    objects = safe_loads(state.blobs[RIVER_BLOB], source=RIVER_BLOB)
    if not isinstance(objects, dict):
        raise CheckpointError("river blob does not hold a dict of objects", path=RIVER_BLOB)
    return objects
