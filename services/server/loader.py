"""Loading one checkpoint version into an inference-only adapter.

Every call into the checkpoint store a model server makes is in this module.
:class:`StoreLoader` opens the store the way a process that only reads state
does (:func:`services.checkpoints.opener.open_reader`: no catalog, nothing
created, migrated or repaired, every write refused by the tiers; several
replicas share one store) and loads through
:meth:`~services.checkpoints.reader.CheckpointReader.load`, which verifies the
manifest's signature and identity before any state file is read, every file's
size and sha256 while reading, and the rebuilt state's digest. The state is
restored into a fresh :func:`~services.learning.adapters.build_predictor`
adapter: torch, the module only (no optimizer is built); river, the model out
of the trainer's river blob, through the restricted unpickler.

The reader finds versions by reading the manifests in the tiers, so a version
committed after the server started is found like any other.
"""

from __future__ import annotations

from typing import Protocol

from schemas.errors import CheckpointError
from services.checkpoints.checkpointer import LoadedCheckpoint
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_reader
from services.checkpoints.state.river_state import restore_river
from services.checkpoints.state.torch_state import TorchAdapter as TorchState
from services.learning.adapters import ModelAdapter, TorchAdapter, build_predictor
from services.learning.config import LearningConfig


class VersionLoader(Protocol):
    """Builds a ready-to-predict adapter for one checkpoint version."""

    def load(self, model: str, version: str) -> ModelAdapter:
        """Load, verify and restore ``version`` of ``model``.

        Raises
        ------
        CheckpointError
            The version is missing, fails verification or cannot be restored.
        ConfigError
            The model is not configured, or its adapter cannot be built.
        """
        ...


class StoreLoader:
    """A :class:`VersionLoader` over the checkpoint store, read-only."""

    def __init__(self, store: StoreConfig, learning: LearningConfig) -> None:
        self.learning = learning
        self.reader = open_reader(store)

    def load(self, model: str, version: str) -> ModelAdapter:
        config = self.learning.model(model)
        loaded = self.reader.load(model, version)
        adapter = build_predictor(config)
        restore_into(adapter, loaded)
        return adapter

    def close(self) -> None:
        self.reader.close()


def restore_into(adapter: ModelAdapter, loaded: LoadedCheckpoint) -> None:
    """Put a loaded checkpoint's model state into an inference-only adapter."""
    state = loaded.state
    if isinstance(adapter, TorchAdapter):
        TorchState(adapter.module, None, capture_rngs=False).restore(state)
        return
    objects = restore_river(state)
    if "model" not in objects:
        raise CheckpointError(
            "checkpoint holds no river model",
            model=loaded.manifest.model,
            version=loaded.manifest.version,
        )
    adapter.load_objects({"model": objects["model"]})
