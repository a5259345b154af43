"""EMA weights: saved with the training state, loadable by name as the "ema" variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schemas.errors import CheckpointError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.ema import EmaWeights
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore


def test_ema_variant_is_the_average_and_training_state_is_the_raw_weights(tmp_path: Path) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    ema = EmaWeights(module, decay=0.9)
    for _ in range(20):
        module(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update()
    adapter = TorchAdapter(module, optimizer, ema=ema)
    with Checkpointer(store, CheckpointerConfig()) as checkpointer:
        manifest = checkpointer.save("net", adapter, step=20).result()
        assert manifest.variants["ema"]["files"]

        averaged = checkpointer.load("net", variant="ema")
        serving = torch.nn.Linear(4, 2)
        TorchAdapter(serving, capture_rngs=False).restore(averaged.state)
        assert torch.equal(serving.weight, ema.shadow["weight"])
        assert not torch.equal(serving.weight, module.weight)

        resumed_module = torch.nn.Linear(4, 2)
        resumed_ema = EmaWeights(resumed_module, decay=0.5)
        checkpointer.restore("net", TorchAdapter(resumed_module, ema=resumed_ema))
        assert torch.equal(resumed_module.weight, module.weight)
        assert torch.equal(resumed_ema.shadow["bias"], ema.shadow["bias"])
        assert (resumed_ema.decay, resumed_ema.updates) == (0.9, 20)


def test_decay_outside_unit_interval_is_refused() -> None:
    with pytest.raises(CheckpointError, match="decay"):
        EmaWeights(torch.nn.Linear(1, 1), decay=1.0)
