"""Torch state round trips: a resumed run is bitwise the uninterrupted run, RNG included."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.errors import CheckpointError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.jsonable import join_tensors, split_tensors
from services.checkpoints.state.rng import capture_rng, restore_rng
from services.checkpoints.state.torch_state import TorchAdapter, restore_torch
from services.checkpoints.store import CheckpointStore


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False, keep_latest=100))


def make_objects(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01, betas=(0.8, 0.99))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    return module, optimizer, scheduler


def train(module, optimizer, scheduler, gen: np.random.Generator, steps: int) -> list[float]:
    """Steps whose data and dropout draw on every RNG; returns the draws made."""
    draws = []
    for _ in range(steps):
        x = torch.from_numpy(gen.normal(size=(8, 6)).astype(np.float32))
        noise = np.random.rand() + random.random()
        y = x.sum(dim=1, keepdim=True) + noise
        loss = torch.nn.functional.mse_loss(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        draws += [noise, float(torch.rand(1))]
    return draws


def seed_all(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@pytest.mark.parametrize("async_saves", [False, True])
def test_resume_from_checkpoint_matches_uninterrupted_run_bitwise(
    store: CheckpointStore, async_saves: bool
) -> None:
    gen = seed_all(7)
    module, optimizer, scheduler = make_objects(1)
    train(module, optimizer, scheduler, gen, 5)
    config = CheckpointerConfig(async_saves=async_saves)
    with Checkpointer(store, config) as checkpointer:
        adapter = TorchAdapter(module, optimizer, scheduler, numpy_generator=gen)
        checkpointer.save("net", adapter, step=5).result()
    expected_draws = train(module, optimizer, scheduler, gen, 4)
    expected = {k: v.clone() for k, v in module.state_dict().items()}

    seed_all(999)  # a different process state: nothing may leak from it
    fresh_gen = np.random.default_rng(12345)
    module2, optimizer2, scheduler2 = make_objects(2)
    loaded = Checkpointer(store, CheckpointerConfig(async_saves=False)).load("net")
    restore_torch(loaded.state, module2, optimizer2, scheduler2, numpy_generator=fresh_gen)
    assert loaded.manifest.step == 5
    draws = train(module2, optimizer2, scheduler2, fresh_gen, 4)

    assert draws == expected_draws
    for name, value in module2.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert optimizer2.param_groups[0]["betas"] == (0.8, 0.99)


def test_restored_optimizer_state_is_bitwise_what_was_saved(store: CheckpointStore) -> None:
    gen = seed_all(3)
    module, optimizer, scheduler = make_objects(1)
    train(module, optimizer, scheduler, gen, 3)
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    checkpointer.save("net", TorchAdapter(module, optimizer, scheduler), step=3)
    module2, optimizer2, scheduler2 = make_objects(5)
    checkpointer.restore("net", TorchAdapter(module2, optimizer2, scheduler2))
    saved, restored = optimizer.state_dict(), optimizer2.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for idx, values in saved["state"].items():
        for key, tensor in values.items():
            assert torch.equal(restored["state"][idx][key], tensor), (idx, key)


def test_restore_refuses_a_checkpoint_without_optimizer_state(store: CheckpointStore) -> None:
    module, optimizer, _ = make_objects(1)
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    checkpointer.save("net", TorchAdapter(module), step=1)
    with pytest.raises(CheckpointError, match="no state for this part"):
        checkpointer.restore("net", TorchAdapter(module, optimizer))


def test_tagged_json_round_trips_what_plain_json_loses() -> None:
    value = {
        "state": {0: {"step": torch.tensor(3.0), "buf": torch.arange(4)}},
        "groups": [{"betas": (0.9, 0.999), "lr": float("inf"), "nan": float("nan"), "p": [0]}],
        "__tuple__": "a key that looks like a tag",
    }
    tensors: dict[str, torch.Tensor] = {}
    doc = split_tensors(value, tensors)
    import orjson

    back = join_tensors(orjson.loads(orjson.dumps(doc)), tensors)
    assert set(back["state"]) == {0}
    assert torch.equal(back["state"][0]["buf"], torch.arange(4))
    assert back["groups"][0]["betas"] == (0.9, 0.999)
    assert back["groups"][0]["lr"] == math.inf
    assert math.isnan(back["groups"][0]["nan"])
    assert back["__tuple__"] == "a key that looks like a tag"


def test_state_that_needs_pickle_is_refused() -> None:
    with pytest.raises(CheckpointError, match="no JSON form"):
        split_tensors({"fn": lambda x: x}, {})


def test_rng_state_survives_json_and_replays_draws() -> None:
    import orjson

    gen = np.random.default_rng(42)
    state = orjson.loads(orjson.dumps(capture_rng(gen)))
    first = (random.random(), np.random.rand(), float(torch.rand(1)), gen.random())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    gen2 = np.random.default_rng(0)
    restore_rng(state, gen2)
    assert (random.random(), np.random.rand(), float(torch.rand(1)), gen2.random()) == first
