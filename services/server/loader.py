"""Loading one checkpoint version into an inference-only adapter.

Every call into the checkpoint store a model server makes is in this module.
:class:`StoreLoader` opens the store the one way every process does
(:func:`services.checkpoints.opener.open_store`, ``read_only=True``: the
server creates, migrates and repairs nothing; several replicas share one
store), loads through :meth:`Checkpointer.load`, which verifies the
manifest's signature and identity before any state file is read and every
file's size and sha256 (and the rebuilt state's digest) while reading, and
restores the state into a fresh :func:`~services.learning.adapters.build_predictor`
adapter: torch, the module only (no optimizer is built); river, the model out
of the trainer's river blob, through the restricted unpickler.

A read-only store catalogues each model once; a version committed after that
is not in its catalog yet, so a miss re-reads the model's manifests once
(``sync(deep=True)``) and tries again.
"""

from __future__ import annotations

from typing import Protocol

from schemas.errors import CheckpointError, CheckpointNotFoundError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig, LoadedCheckpoint
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
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
    """A :class:`VersionLoader` over the checkpoint store, opened read-only."""

    def __init__(self, store: StoreConfig, learning: LearningConfig) -> None:
        self.learning = learning
        self.store = open_store(store, learning, read_only=True)
        # Loading only: no saver thread, no snapshot pool work.
        self._checkpointer = Checkpointer(
            self.store, CheckpointerConfig(async_saves=False, delta=False)
        )

    def load(self, model: str, version: str) -> ModelAdapter:
        config = self.learning.model(model)
        try:
            loaded = self._checkpointer.load(model, version)
        except CheckpointNotFoundError:
            # Committed after this store object catalogued the model: look again once.
            self.store.sync(model, deep=True)
            loaded = self._checkpointer.load(model, version)
        adapter = build_predictor(config)
        restore_into(adapter, loaded)
        return adapter

    def close(self) -> None:
        self.store.close()


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
