"""Differential saves: what changed in a tensor since the parent checkpoint.

A differential (``kind="delta"``) checkpoint stores, per tensor, only what
changed since its parent: nothing when the tensor is bitwise unchanged (its
file is referenced, or the parent's value is taken), the changed rows
(indices + values) when few rows changed — an embedding table under sparse
updates — or the full value otherwise.

When to start a new chain with a full checkpoint is decided from bytes, as
Check-N-Run does: once the deltas since the chain's base have written
``full_after_fraction`` of the base's bytes (or after ``full_every`` deltas,
a cap on the manifests a load opens). A load reads the base plus the chain's
deltas, so its bytes stay within ``1 + full_after_fraction`` (plus one delta)
of a full load, while sparse updates get long chains and few full saves: 1%
of an embedding's rows per interval gives about 50 deltas per full
checkpoint at the default 0.5, where a fixed cadence of 8 paid a full
checkpoint every 9th save. A delta that rewrites everything (a river model's
pickle, a dense layer) counts in full, so such models get short chains:
a delta saves them nothing, and a chain only makes each checkpoint depend on
its parent.

Memory cost: to diff without reading the store, the checkpointer keeps the
parent's tensor snapshot in memory (:class:`ParentState`) — one extra copy
of the tensor state (``CheckpointState.nbytes()``). After a restart it is read
back from the store once, on the first save.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from schemas.manifest import FileEntry
from services.checkpoints.state.state import CheckpointState, rows_view

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

#: Bytes of one row index in a rows file (int64).
INDEX_BYTES = 8
#: A chain length no policy continues (marks a parent a delta may not extend).
FORCE_FULL = 1 << 30
#: Rows sampled before a full compare, and the changed share that skips it.
SAMPLE_ROWS = 64
DENSE_SHARE = 0.9


@dataclass
class ParentState:
    """The newest committed checkpoint, as the next differential save diffs against it."""

    version: str
    base_version: str
    chain: int
    state: CheckpointState
    index: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)
    #: Bytes the chain's base wrote, and the deltas since it (0, 0: not recorded).
    base_bytes: int = 0
    chain_bytes: int = 0

    @classmethod
    def broken(cls, version: str, state: CheckpointState | None = None) -> ParentState:
        """A parent no delta may be built on (the next save is full)."""
        return cls(version, version, FORCE_FULL, state or CheckpointState(), {})

    def extends(self, *, full_every: int, full_after_fraction: float | None) -> bool:
        """Whether the next save may be a delta on this parent: its chain has fewer
        than ``full_every`` deltas, and they wrote less than ``full_after_fraction``
        of the base's bytes (None, or bytes not recorded: the cap alone decides)."""
        if self.chain >= min(full_every, FORCE_FULL):
            return False
        if full_after_fraction is None or self.base_bytes <= 0:
            return True
        return self.chain_bytes < full_after_fraction * self.base_bytes

    def reference(self, name: str) -> FileEntry | None:
        """A ``file_refs`` entry reusing the parent's file ``name`` (wherever its bytes live)."""
        entry = self.files.get(name)
        if entry is None:
            return None
        return FileEntry(
            name=name,
            sha256=entry.sha256,
            size=entry.size,
            ref_version=entry.ref_version or self.version,
        )


@dataclass(frozen=True)
class TensorChange:
    """How one tensor differs from its parent value."""

    mode: Literal["full", "rows", "same"]
    indices: torch.Tensor | None = None


def _wide_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of ``tensor`` reinterpreted as the widest integer type dividing the row size."""
    raw = rows_view(tensor)
    width = raw.shape[1]
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if width % size == 0 and width > 0:
            return raw.view(dtype)
    return raw


def diff_tensor(
    current: torch.Tensor, parent: torch.Tensor | None, *, max_fraction: float
) -> TensorChange:
    """Compare ``current`` with its parent value, bitwise.

    Rows are compared for tensors of two or more dimensions; storing the
    changed rows is chosen when their bytes (values plus an int64 index each)
    are below ``max_fraction`` of the full tensor's bytes.
    """
    if parent is None or parent.shape != current.shape or parent.dtype != current.dtype:
        return TensorChange("full")
    if current.dim() < 2 or current.numel() == 0:
        same = (
            torch.equal(
                current.reshape(-1).contiguous().view(torch.uint8),
                parent.reshape(-1).contiguous().view(torch.uint8),
            )
            if current.numel()
            else True
        )
        return TensorChange("same" if same else "full")
    cur, par = _wide_rows(current), _wide_rows(parent)
    if cur.shape[0] >= 4 * SAMPLE_ROWS:
        # Dense updates change (nearly) every row: an evenly spaced sample says so at a
        # fraction of a full compare. Choosing "full" is always correct, only bigger.
        sample = torch.linspace(0, cur.shape[0] - 1, SAMPLE_ROWS).long()
        changed_share = float((cur[sample] != par[sample]).any(dim=1).float().mean())
        if changed_share >= DENSE_SHARE:
            return TensorChange("full")
    changed = (cur != par).any(dim=1).nonzero().reshape(-1)
    count = int(changed.numel())
    if count == 0:
        return TensorChange("same")
    row_bytes = current[0].numel() * current.element_size()
    full_bytes = current.shape[0] * row_bytes
    if count * (row_bytes + INDEX_BYTES) < max_fraction * full_bytes:
        return TensorChange("rows", changed)
    return TensorChange("full")


def apply_rows(base: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Return ``base`` with rows ``indices`` replaced by ``values`` (``base`` is modified).

    The rows are copied as bytes by numpy, on the calling thread: torch's
    ``index_copy_`` runs an OpenMP parallel region, which on a loaded machine
    waits for descheduled worker threads (measured: 16 ms against 0.09 ms for
    2,000 rows of 64 floats, per tensor and chain level).
    """
    if not indices.numel():
        return base
    values = values.to(base.dtype)
    index = indices.to(torch.int64)
    if base.device.type != "cpu" or not base.is_contiguous() or base.dim() == 0:
        return base.index_copy_(0, index, values)
    rows_view(base).numpy()[index.numpy()] = rows_view(values).numpy()
    return base
