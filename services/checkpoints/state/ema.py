"""Exponential moving average of a module's floating-point weights.

Call :meth:`EmaWeights.update` after each optimizer step; the shadow weights
are saved with the training state as the ``"ema"`` tensor group and can be
loaded by name as the ``"ema"`` variant (a module-shaped state dict) for
serving, while training resumes with the raw weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schemas.errors import CheckpointError

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


class EmaWeights:
    """Shadow copy ``ema = decay * ema + (1 - decay) * weight`` of every float tensor.

    Non-float entries (integer buffers such as BatchNorm's counters) are
    copied as they are.
    """

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise CheckpointError("EMA decay must be in [0, 1)", decay=decay)
        self.module = module
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in module.state_dict().items()
        }

    def update(self) -> None:
        """Fold the module's current weights into the average; call after each step."""
        with torch.no_grad():
            for name, value in self.module.state_dict().items():
                shadow = self.shadow[name]
                if shadow.is_floating_point():
                    shadow.lerp_(value.detach(), 1.0 - self.decay)
                else:
                    shadow.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Shadow tensors plus the decay and update count (live references)."""
        return {"decay": self.decay, "updates": self.updates, "weights": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy saved shadow weights into this EMA (shapes must match)."""
        weights = state["weights"]
        if set(weights) != set(self.shadow):
            raise CheckpointError("EMA weights do not match the module's state dict")
        for name, value in weights.items():
            self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
