"""Capture and restore of the process's random number generators as JSON.

Recorded in the manifest's ``rng`` so that training resumed from a checkpoint
draws the same random numbers it would have drawn uninterrupted:

- ``python``: the global :mod:`random` generator (``random.getstate()``);
- ``numpy``: numpy's legacy global generator (``np.random.get_state()``);
- ``numpy_generator``: optionally one :class:`numpy.random.Generator` the
  caller owns (its ``bit_generator.state``; 128-bit integers kept as strings);
- ``torch``: the torch CPU default generator, base64 of its byte state.
"""

from __future__ import annotations

import base64
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.errors import CheckpointError

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


def _ints_to_str(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints_to_str(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return {"__int__": str(value)}
    return value


def _str_to_ints(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__int__"}:
            return int(value["__int__"])
        return {k: _str_to_ints(v) for k, v in value.items()}
    return value


def capture_rng(numpy_generator: np.random.Generator | None = None) -> dict[str, Any]:
    """Return the current states of python, numpy (and ``numpy_generator``) and torch CPU RNGs."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "numpy": {
            "kind": np_kind,
            "keys": np.asarray(np_keys).tolist(),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if numpy_generator is not None:
        out["numpy_generator"] = _ints_to_str(dict(numpy_generator.bit_generator.state))
    return out


def restore_rng(rng: dict[str, Any], numpy_generator: np.random.Generator | None = None) -> None:
    """Set every RNG recorded in ``rng`` back to its captured state.

    Generators absent from ``rng`` are left alone. ``numpy_generator`` is
    restored in place when given and recorded.

    Raises
    ------
    CheckpointError
        When a recorded state cannot be applied (wrong generator kind, bad size).
    """
    try:
        if "python" in rng:
            py = rng["python"]
            random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        if "numpy" in rng:
            n = rng["numpy"]
            keys = np.asarray(n["keys"], dtype=np.uint32)
            np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        if "torch" in rng:
            raw = base64.b64decode(rng["torch"])
            torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        if numpy_generator is not None and "numpy_generator" in rng:
            numpy_generator.bit_generator.state = _str_to_ints(rng["numpy_generator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot restore RNG state: {exc}") from exc
