"""Capture and restore of torch training state: module, optimizer, LR scheduler, EMA, RNG.

Nothing here pickles: tensors go to safetensors groups, everything else to
tagged JSON documents (:mod:`.jsonable`). Each object owns a tensor group
and a document of the same name (``"model"``, ``"optimizer"``,
``"scheduler"``; ``"ema"`` for the EMA shadow weights), so a restore puts
back exactly what ``state_dict()`` returned — bitwise — and training
continued after a restore matches an uninterrupted run, random draws
included (RNG states travel in the manifest's ``rng``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.errors import CheckpointError
from services.checkpoints.state.ema import EmaWeights
from services.checkpoints.state.jsonable import join_tensors, split_tensors
from services.checkpoints.state.rng import capture_rng, restore_rng
from services.checkpoints.state.state import CheckpointState

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


class TorchAdapter:
    """The state of one torch training loop, captured into and restored from a checkpoint.

    Parameters
    ----------
    module:
        The model; its ``state_dict()`` becomes the ``"model"`` group.
    optimizer, scheduler:
        Optional; their ``state_dict()`` tensors become the ``"optimizer"`` /
        ``"scheduler"`` groups and the rest JSON documents.
    ema:
        Optional EMA shadow weights, saved as the ``"ema"`` group (loadable
        by name as the ``"ema"`` variant).
    numpy_generator:
        A ``numpy.random.Generator`` the loop draws from, recorded with the
        global RNGs.
    capture_rngs:
        Record (and on restore, set) the process-global RNG states.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        *,
        ema: EmaWeights | None = None,
        numpy_generator: np.random.Generator | None = None,
        capture_rngs: bool = True,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.numpy_generator = numpy_generator
        self.capture_rngs = capture_rngs

    def capture(self) -> CheckpointState:
        """Return the current state. Tensors are *live references*, not copies.

        The checkpointer snapshots them (copy into buffers) before any
        background work; a caller keeping the result must copy it itself.
        """
        state = CheckpointState()
        parts: dict[str, Any] = {"model": self.module.state_dict()}
        if self.optimizer is not None:
            parts["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            parts["scheduler"] = self.scheduler.state_dict()
        if self.ema is not None:
            parts["ema"] = self.ema.state_dict()
        for name, value in parts.items():
            tensors: dict[str, torch.Tensor] = {}
            state.documents[name] = split_tensors(value, tensors)
            if tensors:
                state.groups[name] = tensors
        if self.capture_rngs:
            state.rng = capture_rng(self.numpy_generator)
        return state

    def restore(self, state: CheckpointState) -> None:
        """Load ``state`` into the module, optimizer, scheduler, EMA and RNGs, in place.

        Raises
        ------
        CheckpointError
            When the state lacks a part this adapter has (e.g. no optimizer
            state saved) or a ``load_state_dict`` refuses it.
        """
        targets: dict[str, Any] = {
            "model": self.module,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "ema": self.ema,
        }
        for name, target in targets.items():
            if target is None:
                continue
            if name not in state.documents:
                raise CheckpointError("checkpoint holds no state for this part", part=name)
            value = join_tensors(state.documents[name], state.groups.get(name, {}))
            try:
                if name == "model":
                    target.load_state_dict(value, strict=True)
                else:
                    target.load_state_dict(value)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CheckpointError(f"cannot restore {name} state: {exc}", part=name) from exc
        if self.capture_rngs and state.rng:
            restore_rng(state.rng, self.numpy_generator)


def restore_torch(
    state: CheckpointState,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    ema: EmaWeights | None = None,
    numpy_generator: np.random.Generator | None = None,
    rngs: bool = True,
) -> None:
    """Restore a loaded state into fresh torch objects (see :class:`TorchAdapter`)."""
    TorchAdapter(
        module, optimizer, scheduler, ema=ema, numpy_generator=numpy_generator, capture_rngs=rngs
    ).restore(state)
