"""The in-memory form of everything a checkpoint restores.

A :class:`CheckpointState` is what adapters capture and restore, what the
encoder turns into named files, and what a load hands back:

- ``groups``: tensor groups, ``{group: {name: tensor}}`` (``"model"``,
  ``"optimizer"``, ``"ema"``, ...). Each tensor is stored as its own
  safetensors file, so a tensor that did not change is a file that did not
  change and a differential save can reference it instead of rewriting it.
- ``documents``: JSON documents (optimizer param groups and scalar state,
  LR-scheduler state, ...), in the tagged form of :mod:`.jsonable`.
- ``blobs``: opaque bytes (river pickles), loaded back only through
  :mod:`.safe_pickle`.
- ``rng``: RNG states as JSON-able values; they go to the manifest's ``rng``.

The state digest (:func:`state_digest`) is a sha256 over every tensor's
qualified name, dtype, shape and raw bytes, in sorted order. It is recorded at
save time and checked after a load reconstructs the state, whatever path the
bytes took (full file, referenced file, rows applied to a parent).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CheckpointState:
    """Tensors, JSON documents, opaque blobs and RNG states of one checkpoint."""

    groups: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under its qualified name ``"{group}/{name}"``."""
        return {f"{g}/{n}": t for g, ts in self.groups.items() for n, t in ts.items()}

    def nbytes(self) -> int:
        """Bytes held by the tensors (documents and blobs excluded)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor, in C order, without a copy when contiguous."""
    flat = tensor.detach().reshape(-1).contiguous()
    return flat.view(torch.uint8).numpy().data


def tensor_digest(tensor: torch.Tensor, name: str, hasher: Any | None = None) -> Any:
    """Feed ``name``, dtype, shape and bytes of ``tensor`` into a sha256 and return it."""
    h = hasher if hasher is not None else hashlib.sha256()
    h.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}|".encode())
    h.update(tensor_bytes(tensor))
    return h


def state_digest(state: CheckpointState) -> str:
    """sha256 hex over every tensor's qualified name, dtype, shape and bytes, sorted by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.tensors().items()):
        tensor_digest(tensor, name, h)
    return h.hexdigest()


def rows_view(tensor: torch.Tensor) -> torch.Tensor:
    """A ``(rows, row_bytes)`` uint8 view of a tensor with at least two dimensions."""
    flat = tensor.detach().contiguous()
    return flat.view(torch.uint8).reshape(flat.shape[0], -1)
