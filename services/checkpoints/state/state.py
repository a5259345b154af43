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

The state digest (:func:`state_digest`, ``tf2:<hex>``) is a sha256 over
every tensor's qualified name and *canonical digest* — the sha256 of the
one-tensor safetensors file the encoder writes for it (which covers dtype,
shape and bytes) — and every blob's name and sha256 (the river pickles), in
sorted order. It is recorded at save time and checked after a load, whatever
path the bytes took (full file, referenced file, rows applied to a parent).
Defined this way it costs no extra pass where a file's hash is already known:
on save the store hashes each file while writing it and the digest is
composed from those hashes; on load a tensor decoded from a verified file, and
a blob read from one, contribute that file's hash, and only tensors rebuilt
from rows are hashed again.

Older manifests are still checked their way: ``tf1:<hex>`` covers the tensors
only (:func:`compose_digest_v1`; every river state had the same one, the
digest of nothing), and a bare hex digest (:func:`legacy_state_digest`: name,
dtype, shape and raw bytes) predates both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.checkpoints.state.encoding import tensor_file_digest

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

#: Marks a state digest of canonical tensor-file digests and blob digests.
DIGEST_PREFIX = "tf2:"
#: Marks the older digest of tensor-file digests only (blobs not covered).
DIGEST_PREFIX_V1 = "tf1:"


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


def compose_digest(tensor_digests: Mapping[str, str], blob_digests: Mapping[str, str]) -> str:
    """The ``tf2:`` state digest from each qualified tensor name's canonical digest and
    each blob name's sha256 (hex)."""
    h = hashlib.sha256(b"tf2\n")
    for name, digest in sorted(tensor_digests.items()):
        h.update(f"tensor\0{name}\0{digest}\n".encode())
    for name, digest in sorted(blob_digests.items()):
        h.update(f"blob\0{name}\0{digest}\n".encode())
    return DIGEST_PREFIX + h.hexdigest()


def compose_digest_v1(tensor_digests: Mapping[str, str]) -> str:
    """The older ``tf1:`` digest: tensors only."""
    h = hashlib.sha256()
    for name, digest in sorted(tensor_digests.items()):
        h.update(f"{name}\0{digest}\n".encode())
    return DIGEST_PREFIX_V1 + h.hexdigest()


def state_digest(state: CheckpointState) -> str:
    """The ``tf2:`` digest of ``state``, hashing every tensor and blob (one pass each)."""
    return compose_digest(
        {q: tensor_file_digest(t) for q, t in state.tensors().items()},
        {name: hashlib.sha256(data).hexdigest() for name, data in state.blobs.items()},
    )


def legacy_state_digest(state: CheckpointState) -> str:
    """The bare-hex digest of manifests written before ``tf1:`` (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.tensors().items()):
        tensor_digest(tensor, name, h)
    return h.hexdigest()


def rows_view(tensor: torch.Tensor) -> torch.Tensor:
    """A ``(rows, row_bytes)`` uint8 view of a tensor with at least two dimensions."""
    flat = tensor.detach().contiguous()
    return flat.view(torch.uint8).reshape(flat.shape[0], -1)
