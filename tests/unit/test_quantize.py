"""Row-wise int8 variant: bounded error, recorded in the manifest, loadable by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import CheckpointNotFoundError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.quantize import dequantize, max_abs_error, quantize
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore

floats = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 9),
    data=st.data(),
    symmetric=st.booleans(),
)
def test_error_is_within_half_a_step_per_row(rows: int, cols: int, data, symmetric: bool) -> None:
    values = data.draw(st.lists(floats, min_size=rows * cols, max_size=rows * cols))
    x = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    parts = quantize(x, symmetric=symmetric)
    approx = dequantize(parts, (rows, cols), torch.float32, symmetric=symmetric)
    step = parts["scale"][:, None]
    assert bool(((approx - x).abs() <= step * 0.5 + 1e-3 * step + 1e-6).all())
    assert max_abs_error(x, parts, symmetric=symmetric) == pytest.approx(
        float((approx - x).abs().max()), abs=1e-6
    )


def test_integer_tensors_are_kept_exactly() -> None:
    counts = torch.arange(10)
    assert torch.equal(dequantize(quantize(counts), (10,), torch.int64, symmetric=False), counts)


@pytest.mark.parametrize("symmetric", [False, True])
def test_int8_variant_loads_by_name_with_recorded_error(tmp_path: Path, symmetric: bool) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 4))
    config = CheckpointerConfig(async_saves=False, int8=True, int8_symmetric=symmetric)
    checkpointer = Checkpointer(store, config)
    manifest = checkpointer.save("net", TorchAdapter(module), step=1).result()
    info = manifest.variants["int8"]
    assert info["max_abs_error"] > 0
    stored = {f.name: f.size for f in manifest.files}
    int8_bytes = sum(stored[name] for name in info["files"])
    exact_bytes = sum(s for n, s in stored.items() if n.startswith("tensors/model/"))
    assert int8_bytes < exact_bytes / 3

    variant = checkpointer.load("net", variant="int8")
    served = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.Linear(128, 4))
    TorchAdapter(served, capture_rngs=False).restore(variant.state)
    worst = max(
        float((served.state_dict()[k] - v).abs().max()) for k, v in module.state_dict().items()
    )
    assert 0 < worst <= info["max_abs_error"] + 1e-7


def test_missing_variant_is_not_found(tmp_path: Path) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    checkpointer.save("net", TorchAdapter(torch.nn.Linear(2, 2)), step=1)
    with pytest.raises(CheckpointNotFoundError, match="int8"):
        checkpointer.load("net", variant="int8")
