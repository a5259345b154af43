"""The adapters' inference path: predict_many with no label, nothing learned, nothing built
for training (torch: no optimizer, inference_mode), for both shipped examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from river import datasets

from schemas.errors import LearnError, SchemaError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.learning.adapters import (
    PredictError,
    RiverAdapter,
    TorchAdapter,
    build_adapter,
    build_predictor,
)
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.server.loader import StoreLoader

KINDS = ["river", "torch"]


def _config(kind: str) -> ModelConfig:
    cfg = load_config(example_path("river_logreg" if kind == "river" else "torch_fm")).models[0]
    update: dict[str, Any] = {"name": "m", "batch_size": 10}
    if cfg.encoding is not None:
        update["encoding"] = cfg.encoding.model_copy(update={"buckets": 4096})
    return cfg.model_copy(update=update)


def _trained(kind: str, n: int = 200) -> Any:
    adapter = build_adapter(_config(kind))
    exs = list(examples_from(datasets.Phishing(), "m", limit=n))
    for i in range(0, len(exs), 10):
        adapter.learn(exs[i : i + 10])
    return adapter, exs


@pytest.mark.parametrize("kind", KINDS)
def test_predict_many_agrees_with_score_and_changes_nothing(kind: str) -> None:
    adapter, exs = _trained(kind)
    before = adapter.state_digest()
    predictions = adapter.predict_many([e.features for e in exs[:50]])
    assert adapter.state_digest() == before
    assert len(predictions) == 50
    for ex, p in zip(exs[:50], predictions, strict=True):
        s = adapter.score(ex)
        assert p.value == s.y_pred
        assert p.scores is not None
        assert s.proba is not None
        assert p.scores[True] == pytest.approx(s.proba[True])
        assert sum(p.scores.values()) == pytest.approx(1.0)


def test_torch_predictor_builds_no_optimizer_and_refuses_to_learn() -> None:
    predictor = build_predictor(_config("torch"))
    assert isinstance(predictor, TorchAdapter)
    assert predictor._optimizer is None
    assert not predictor.module.training
    with pytest.raises(LearnError, match="inference-only"):
        predictor.learn(list(examples_from(datasets.Phishing(), "m", limit=3)))
    # The trainer's adapter still has one.
    assert isinstance(build_adapter(_config("torch")).optimizer, torch.optim.Adagrad)


def test_torch_predicts_under_inference_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = build_predictor(_config("torch"))
    assert isinstance(predictor, TorchAdapter)
    seen: list[bool] = []
    forward = predictor.module.forward

    def spy(*args: Any) -> Any:
        seen.append(torch.is_inference_mode_enabled())
        return forward(*args)

    monkeypatch.setattr(predictor.module, "forward", spy)
    predictor.predict_many([{"a": 1.0}, {"b": "x"}])
    assert seen == [True]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_features_predict_nothing_and_name_the_instance(kind: str) -> None:
    predictor = build_predictor(_config(kind))
    bad: dict[str, Any] = {"f": float("nan")}
    with pytest.raises(SchemaError) as info:
        predictor.predict_many([{"f": 1.0}, {"f": 2.0}, bad])
    assert info.value.context["index"] == 2
    assert info.value.field == "features.f"


def test_river_numeric_model_refuses_strings() -> None:
    predictor = build_predictor(_config("river"))
    assert isinstance(predictor, RiverAdapter)
    with pytest.raises(SchemaError, match="not a real number"):
        predictor.predict_many([{"f": "text"}])


def test_model_failure_is_a_predict_error(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = build_predictor(_config("river"))

    def boom(x: Any) -> Any:
        raise ZeroDivisionError("inside the model")

    monkeypatch.setattr(predictor.model, "predict_proba_one", boom)  # type: ignore[attr-defined]
    with pytest.raises(PredictError, match="ZeroDivisionError") as info:
        predictor.predict_many([{"f": 1.0}])
    assert info.value.context["index"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_trainer_checkpoint_loads_into_a_predictor_that_predicts_like_the_trainer(
    kind: str, tmp_path: Path
) -> None:
    config = _config(kind)
    store_config = StoreConfig(root=tmp_path / "store", fsync=False)
    sink = CheckpointerSink(
        Checkpointer(CheckpointStore(store_config), CheckpointerConfig(async_saves=False))
    )
    trainer = OnlineTrainer(config, sink)
    exs = list(examples_from(datasets.Phishing(), "m", limit=120))
    for i, ex in enumerate(exs):
        trainer.process(ex, topic="t", partition=0, offset=i)
    version = trainer.checkpoint("manual", "test").version

    from services.learning.config import LearningConfig

    loader = StoreLoader(store_config, LearningConfig(model=(config,)))
    predictor = loader.load("m", version)
    want = trainer.adapter.predict_many([e.features for e in exs])
    got = predictor.predict_many([e.features for e in exs])
    assert got == want
    if kind == "torch":
        assert isinstance(predictor, TorchAdapter)
        assert predictor._optimizer is None
