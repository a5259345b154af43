"""Adapters, labels and hashed torch models."""

from __future__ import annotations

import pytest
import torch
from river import datasets

from schemas.errors import SchemaError
from services.learning.adapters import TorchAdapter
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.hashing import FeatureHasher, FeatureValue
from services.learning.labels import binary_target, class_label, regression_target
from services.learning.synthetic import LocalExample, examples_from

FM = "services.learning.torch_models.HashedFactorizationMachine"


def torch_config(path: str = FM) -> ModelConfig:
    cfg = load_config(example_path("torch_fm")).models[0]
    enc = cfg.encoding.model_copy(update={"buckets": 1024}) if cfg.encoding else None
    params = cfg.factory.params if path == FM else {}
    factory = cfg.factory.model_copy(update={"path": path, "params": params})
    return cfg.model_copy(update={"encoding": enc, "factory": factory})


def test_hashing_is_stable_and_seeded() -> None:
    a, b, c = FeatureHasher(1 << 20, 0), FeatureHasher(1 << 20, 0), FeatureHasher(1 << 20, 1)
    features: dict[str, FeatureValue] = {"country": "fr", "age": 31.0, "vip": False}
    assert a.encode(features) == b.encode(features)
    assert a.encode(features)[0] != c.encode(features)[0]
    _, weights = a.encode(features)
    assert weights == [31.0, 1.0]  # vip=False has weight 0 and is dropped


@pytest.mark.parametrize(
    "path",
    [
        "services.learning.torch_models.HashedLinear",
        "services.learning.torch_models.HashedFactorizationMachine",
    ],
)
def test_a_torch_step_touches_only_the_rows_of_the_batch(path: str) -> None:
    adapter = TorchAdapter(torch_config(path))
    before = {k: v.clone() for k, v in adapter.module.state_dict().items()}
    batch = [
        LocalExample(f"e{i}", "torch-fm", {"f": float(i + 1), "c": "x"}, True) for i in range(4)
    ]
    adapter.learn(batch)
    rows = set(adapter.hasher.encode(batch[0].features)[0])
    for key, after in adapter.module.state_dict().items():
        if after.dim() == 2:
            changed = set((after != before[key]).any(dim=1).nonzero().flatten().tolist())
            assert changed == rows, key


def test_torch_model_learns_and_scores_before_learning() -> None:
    adapter = TorchAdapter(torch_config())
    exs = list(examples_from(datasets.Phishing(), "torch-fm"))
    first = exs[:64]
    expected = [adapter.score(e) for e in first]
    scores = adapter.test_then_train(first)
    assert [s.loss for s in scores] == [e.loss for e in expected]
    assert [s.y_pred for s in scores] == [e.y_pred for e in expected]
    for i in range(64, len(exs) - 64, 64):
        adapter.test_then_train(exs[i : i + 64])
    late = adapter.test_then_train(exs[-64:])
    accuracy = sum(1.0 - s.error for s in late) / len(late)
    assert accuracy > 0.75


def test_torch_state_round_trips_bitwise() -> None:
    a, b = TorchAdapter(torch_config()), TorchAdapter(torch_config())
    exs = list(examples_from(datasets.Phishing(), "torch-fm", limit=128))
    a.learn(exs[:64])
    assert a.state_digest() != b.state_digest()
    b.load_objects(a.live_objects())
    assert a.state_digest() == b.state_digest()
    a.learn(exs[64:])
    b.learn(exs[64:])
    assert torch.equal(
        a.module.state_dict()["factors.weight"], b.module.state_dict()["factors.weight"]
    )


def test_labels_convert_as_documented() -> None:
    assert class_label(2.0) == 2
    assert binary_target("No") is False
    assert binary_target(1.0) is True
    assert binary_target("fraud", positive_label="fraud") is True
    assert binary_target("ok", positive_label="fraud") is False
    assert regression_target(False) == 0.0
    with pytest.raises(SchemaError, match="not binary"):
        binary_target(3)
    with pytest.raises(SchemaError, match="not a number"):
        regression_target("abc")
    with pytest.raises(SchemaError, match="not finite"):
        regression_target(float("nan"))
