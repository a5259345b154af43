"""Consistent in-memory snapshots of a captured state, into reusable buffers.

An asynchronous save may only read tensors the training loop no longer
writes, so before returning control the checkpointer copies every tensor of
the captured state. :class:`SnapshotPool` does that either by ``clone()``
(a fresh allocation each time) or by ``copy_`` into buffers kept from earlier
snapshots of the same shapes (``mode="copy"``, the default: no allocator or
page-fault cost after the first save; ``benchmarks/checkpoint_pause.py``
measures both). Buffers are pinned when CUDA is available, so device-to-host
copies can be asynchronous. Documents, blobs and RNG states are already
fresh values made by ``capture()``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal

from services.checkpoints.state.state import CheckpointState

if TYPE_CHECKING:
    import torch

    Signature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


def _signature(groups: dict[str, dict[str, torch.Tensor]]) -> Signature:
    return tuple(
        (f"{g}/{n}", tuple(t.shape), t.dtype)
        for g, ts in sorted(groups.items())
        for n, t in sorted(ts.items())
    )


class SnapshotPool:
    """Makes snapshots of states and recycles their buffers once a save is done with them.

    Thread-safe: :meth:`take` runs on the training thread, :meth:`give_back`
    on the saver's background thread. At most ``keep`` idle buffer sets are
    kept; more are freed.
    """

    def __init__(self, mode: Literal["copy", "clone"] = "copy", *, keep: int = 2) -> None:
        self.mode = mode
        self.keep = keep
        self._pin: bool | None = None  # torch.cuda.is_available(), asked at the first tensor
        self._idle: list[tuple[Signature, dict[str, dict[str, torch.Tensor]]]] = []
        self._lock = threading.Lock()

    @property
    def pin(self) -> bool:
        """Whether snapshot buffers are pinned (CUDA present); asked of torch at first use."""
        if self._pin is None:
            self._pin = bool(torch.cuda.is_available())
        return self._pin

    def _buffers(
        self, groups: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        signature = _signature(groups)
        with self._lock:
            for i, (sig, buffers) in enumerate(self._idle):
                if sig == signature:
                    del self._idle[i]
                    return buffers
        return {
            g: {
                n: torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.pin)
                for n, t in ts.items()
            }
            for g, ts in groups.items()
        }

    def take(self, state: CheckpointState) -> CheckpointState:
        """A copy of ``state`` whose tensors nothing else writes (CPU, contiguous)."""
        if self.mode == "clone":
            groups = {
                g: {n: t.detach().to("cpu", copy=True).contiguous() for n, t in ts.items()}
                for g, ts in state.groups.items()
            }
        else:
            groups = self._buffers(state.groups)
            device_copy = False
            for g, ts in state.groups.items():
                for n, t in ts.items():
                    device_copy = device_copy or t.device.type != "cpu"
                    groups[g][n].copy_(t.detach(), non_blocking=self.pin)
            if device_copy and self.pin:
                torch.cuda.synchronize()
        return CheckpointState(
            groups=groups,
            documents=state.documents,
            blobs=dict(state.blobs),
            rng=state.rng,
        )

    def give_back(self, state: CheckpointState) -> None:
        """Offer a snapshot's buffers for reuse; call when no save reads them any more."""
        if self.mode == "clone" or not state.groups:
            return
        with self._lock:
            self._idle.append((_signature(state.groups), state.groups))
            del self._idle[: max(0, len(self._idle) - self.keep)]
