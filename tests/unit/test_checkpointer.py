"""What the Checkpointer records in the manifest, and how it refuses bad input early."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schemas.errors import CheckpointNotFoundError, SchemaError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig, code_version
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore


@pytest.fixture
def checkpointer(tmp_path: Path) -> Checkpointer:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    return Checkpointer(store, CheckpointerConfig(async_saves=False))


def test_manifest_records_the_training_context(checkpointer: Checkpointer) -> None:
    manifest = checkpointer.save(
        "fraud",
        TorchAdapter(torch.nn.Linear(3, 1)),
        step=45_000,
        examples_seen=2_880_000,
        trigger="drift",
        metrics={"logloss": 0.321},
        key_metric="logloss",
        offsets={"training-examples": {0: 120, 1: 98}},
        config={"lr": 0.01},
        example_digest="ab" * 16,
        extra={"schedule": "adaptive"},
    ).result()
    assert manifest.label == f"{manifest.version} step=45000 drift logloss=0.3210"
    assert manifest.offsets == {"training-examples": {"0": 120, "1": 98}}
    assert (manifest.examples_seen, manifest.example_digest) == (2_880_000, "ab" * 16)
    assert manifest.config == {"lr": 0.01}
    assert manifest.extra == {"schedule": "adaptive"}
    assert set(manifest.rng) == {"python", "numpy", "torch"}
    assert manifest.code_version == code_version()
    assert manifest.code_version["driftloop"]
    assert len(manifest.code_version.get("git_commit", "0" * 40)) == 40
    assert manifest.state_digest is not None


def test_bad_metadata_is_refused_before_anything_is_saved(checkpointer: Checkpointer) -> None:
    with pytest.raises(SchemaError, match="metrics") as info:
        checkpointer.save("fraud", CheckpointState(), step=1, metrics={"bad name": 1.0})
    assert info.value.context["model"] == "fraud"
    assert checkpointer.store.latest("fraud") is None


def test_odd_tensor_names_get_safe_file_names_and_round_trip(checkpointer: Checkpointer) -> None:
    names = ["layer/0.weight", ".hidden", "ümlaut name", "x" * 300]
    state = CheckpointState(
        groups={"model": {n: torch.full((2,), float(i)) for i, n in enumerate(names)}}
    )
    checkpointer.save("odd", state, step=1)
    loaded = checkpointer.load("odd").state.groups["model"]
    assert sorted(loaded) == sorted(names)
    for i, name in enumerate(names):
        assert torch.equal(loaded[name], torch.full((2,), float(i)))


def test_load_and_restore_on_an_empty_store(checkpointer: Checkpointer) -> None:
    with pytest.raises(CheckpointNotFoundError):
        checkpointer.load("nothing")
    assert checkpointer.restore("nothing", TorchAdapter(torch.nn.Linear(1, 1))) is None
