"""Row-wise int8 quantization: a compact, lossy copy of weights for a cold tier.

Each row of a floating tensor (its first dimension; a 0-d or 1-d tensor is one
row) gets its own scale: affine (``q = round((x - min) / scale) - 128`` with
``scale = (max - min) / 255``) or symmetric (``q = round(x / scale)`` with
``scale = max|x| / 127``). The maximum absolute error over all tensors is
recorded in the manifest's ``variants["int8"]["max_abs_error"]``. Integer
and boolean tensors are kept as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    x = tensor.detach().to(torch.float32)
    return x.reshape(1, -1) if x.dim() < 2 else x.reshape(x.shape[0], -1)


def quantize(tensor: torch.Tensor, *, symmetric: bool = False) -> dict[str, torch.Tensor]:
    """Quantize one tensor; returns ``{"q", "scale", "zero"}`` (float tensors) or ``{"raw"}``."""
    if not tensor.is_floating_point():
        return {"raw": tensor.detach().clone()}
    rows = _as_rows(tensor)
    if rows.numel() == 0:
        zeros = torch.zeros(rows.shape[0], dtype=torch.float32)
        return {"q": rows.to(torch.int8), "scale": zeros + 1, "zero": zeros}
    if symmetric:
        scale = rows.abs().amax(dim=1) / 127.0
        zero = torch.zeros_like(scale)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(rows / scale[:, None]).clamp_(-127, 127)
    else:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = lo
        q = torch.round((rows - lo[:, None]) / scale[:, None]).clamp_(0, 255) - 128
    return {"q": q.to(torch.int8), "scale": scale, "zero": zero}


def dequantize(
    parts: dict[str, torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype, *, symmetric: bool
) -> torch.Tensor:
    """Rebuild an approximate tensor, given which scheme :func:`quantize` used."""
    if "raw" in parts:
        return parts["raw"]
    q = parts["q"].to(torch.float32)
    scale, zero = parts["scale"][:, None], parts["zero"][:, None]
    x = q * scale if symmetric else (q + 128.0) * scale + zero
    return x.reshape(shape).to(dtype)


def max_abs_error(
    tensor: torch.Tensor, parts: dict[str, torch.Tensor], *, symmetric: bool
) -> float:
    """The largest absolute difference between ``tensor`` and its dequantized copy."""
    if "raw" in parts or tensor.numel() == 0:
        return 0.0
    approx = dequantize(parts, tuple(tensor.shape), torch.float32, symmetric=symmetric)
    return float((approx - tensor.detach().to(torch.float32)).abs().max())
