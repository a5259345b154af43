"""The store evaluator: real signed checkpoints scored on held-out examples, its checks
(loads, finite weights, finite predictions), skipped examples and its version cache."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from river import base, datasets, linear_model

from schemas.errors import ConfigError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.learning.adapters import ModelAdapter, RiverAdapter
from services.learning.config import LearningConfig, ModelConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.server.loader import StoreLoader
from services.validation.base import (
    CHECK_FINITE_PREDICTIONS,
    CHECK_FINITE_WEIGHTS,
    CHECK_LOADS,
    HoldoutExample,
)
from services.validation.evaluate import StoreEvaluator
from services.validation.weights import river_problem, torch_problem

RIVER = load_config(example_path("river_logreg")).model("river-logreg")
_TORCH = load_config(example_path("torch_fm")).model("torch-fm")
assert _TORCH.encoding is not None
TORCH = _TORCH.model_copy(
    update={"batch_size": 16, "encoding": _TORCH.encoding.model_copy(update={"buckets": 4096})}
)
LEARNING = LearningConfig.model_validate({"model": [RIVER, TORCH]})
MODELS = {m.name: m for m in LEARNING.models}
PHISHING = list(datasets.Phishing())  # 1,250 examples
HOLDOUT = [
    HoldoutExample(f"r{i}", x, y, 1.0, i, "served") for i, (x, y) in enumerate(PHISHING[900:])
]


def _train(
    store: StoreConfig,
    config: ModelConfig,
    pairs: Iterable[tuple[dict[str, Any], Any]],
    *,
    every: int,
    before_checkpoint: Callable[[OnlineTrainer], None] | None = None,
) -> list[str]:
    """Train a fresh trainer on ``pairs`` through the real signing store; a version per
    ``every`` examples (``before_checkpoint`` may edit the model first)."""
    sink = CheckpointerSink(
        Checkpointer(CheckpointStore(store), CheckpointerConfig(async_saves=False))
    )
    trainer = OnlineTrainer(config, sink)
    versions = []
    for i, ex in enumerate(examples_from(pairs, config.name)):
        trainer.process(ex, topic="t", partition=0, offset=i)
        if (i + 1) % every == 0:
            if before_checkpoint is not None:
                before_checkpoint(trainer)
            versions.append(trainer.checkpoint("manual").version)
    return versions


class CountingLoader:
    """A VersionLoader that counts the loads it passes on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def load(self, model: str, version: str) -> ModelAdapter:
        self.calls.append((model, version))
        adapter: ModelAdapter = self.inner.load(model, version)
        return adapter


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StoreConfig:
    return StoreConfig(root=tmp_path_factory.mktemp("evaluate") / "store", fsync=False)


@pytest.fixture(scope="module")
def river_versions(store: StoreConfig) -> list[str]:
    """Two versions of river-logreg: after 128 and after 512 examples."""
    early = _train(store, RIVER, PHISHING[:128], every=128)
    late = _train(store, RIVER, PHISHING[:512], every=512)
    return early + late


@pytest.fixture(scope="module")
def torch_version(store: StoreConfig) -> str:
    (version,) = _train(store, TORCH, PHISHING[:400], every=400)
    return version


def _evaluator(store: StoreConfig, **kwargs: Any) -> tuple[StoreEvaluator, CountingLoader]:
    loader = CountingLoader(StoreLoader(store, LEARNING))
    return StoreEvaluator(loader, MODELS, **kwargs), loader


def test_a_good_river_version_scores_its_accuracy_on_every_held_out_example(
    store: StoreConfig, river_versions: list[str]
) -> None:
    evaluator, _ = _evaluator(store)
    late = river_versions[-1]
    result = evaluator.evaluate(RIVER.name, late, HOLDOUT, "accuracy")
    assert result.passed, result.error
    assert result.checks == {
        CHECK_LOADS: True,
        CHECK_FINITE_WEIGHTS: True,
        CHECK_FINITE_PREDICTIONS: True,
    }
    assert result.n == len(HOLDOUT) == 350
    assert result.value is not None
    assert 0.75 < result.value <= 1.0  # a trained logistic regression on Phishing
    # It is the accuracy of the version's own predictions on those examples.
    adapter = StoreLoader(store, LEARNING).load(RIVER.name, late)
    predictions = adapter.predict_many([e.features for e in HOLDOUT])
    right = sum(p.value == e.label for p, e in zip(predictions, HOLDOUT, strict=True))
    assert result.value == pytest.approx(right / len(HOLDOUT))
    # Each example's own loss, by its index: 1 for a wrong prediction.
    assert result.losses == {
        i: float(p.value != e.label)
        for i, (p, e) in enumerate(zip(predictions, HOLDOUT, strict=True))
    }
    loss = evaluator.evaluate(RIVER.name, late, HOLDOUT, "log_loss")
    assert loss.passed
    assert loss.value is not None
    assert 0.0 < loss.value < math.log(2)  # better than a coin
    assert loss.losses is not None
    assert len(loss.losses) == len(HOLDOUT)
    assert sum(loss.losses.values()) / len(HOLDOUT) == pytest.approx(loss.value)


def test_a_good_torch_version_scores_a_plausible_log_loss(
    store: StoreConfig, torch_version: str
) -> None:
    evaluator, _ = _evaluator(store)
    result = evaluator.evaluate(TORCH.name, torch_version, HOLDOUT, "log_loss")
    assert result.passed, result.error
    assert result.n == len(HOLDOUT)
    assert result.value is not None
    assert 0.0 < result.value < math.log(2)
    accuracy = evaluator.evaluate(TORCH.name, torch_version, HOLDOUT, "accuracy")
    assert accuracy.value is not None
    assert accuracy.value > 0.6


def test_two_versions_on_the_same_examples_are_comparable(
    store: StoreConfig, river_versions: list[str]
) -> None:
    evaluator, _ = _evaluator(store)
    early, late = (evaluator.evaluate(RIVER.name, v, HOLDOUT, "log_loss") for v in river_versions)
    assert early.passed
    assert late.passed
    assert early.n == late.n == len(HOLDOUT)
    assert early.value is not None
    assert late.value is not None
    assert late.value < early.value  # four times the training, a lower loss
    again = evaluator.evaluate(RIVER.name, river_versions[0], HOLDOUT, "log_loss")
    assert again.value == early.value


def test_a_version_predicting_the_wrong_class_scores_a_lower_accuracy(
    store: StoreConfig, river_versions: list[str]
) -> None:
    inverted = [(x, not y) for x, y in PHISHING[:512]]
    (wrong,) = _train(store, RIVER, inverted, every=512)
    evaluator, _ = _evaluator(store)
    real = evaluator.evaluate(RIVER.name, river_versions[-1], HOLDOUT, "accuracy")
    bad = evaluator.evaluate(RIVER.name, wrong, HOLDOUT, "accuracy")
    assert bad.passed  # nothing is wrong with its figures: it is only a worse model
    assert bad.value is not None
    assert real.value is not None
    assert bad.value < 0.5 < real.value


def test_a_corrupt_state_file_fails_the_load_check_naming_the_path_and_hashes(
    tmp_path: Path,
) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (version,) = _train(config, RIVER, PHISHING[:64], every=64)
    directory = config.root / RIVER.name / version
    state = max(
        (p for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    evaluator, _ = _evaluator(config)
    result = evaluator.evaluate(RIVER.name, version, HOLDOUT, "accuracy")
    assert result.checks == {CHECK_LOADS: False}
    assert not result.passed
    assert result.value is None
    assert result.error is not None
    assert version in result.error
    assert state.name in result.error
    assert "expected_sha256=" in result.error
    assert "actual_sha256=" in result.error


def test_a_missing_version_and_an_unconfigured_model_fail_the_load_check(
    store: StoreConfig, river_versions: list[str]
) -> None:
    evaluator, loader = _evaluator(store)
    missing = evaluator.evaluate(RIVER.name, "river-logreg-009999", HOLDOUT, "accuracy")
    assert missing.checks == {CHECK_LOADS: False}
    assert missing.error is not None
    assert "river-logreg-009999" in missing.error
    other = StoreEvaluator(loader, {}).evaluate(RIVER.name, river_versions[0], HOLDOUT, "accuracy")
    assert other.checks == {CHECK_LOADS: False}
    assert "not configured" in (other.error or "")


def _poison_torch(trainer: OnlineTrainer) -> None:
    module = trainer.adapter.live_objects()["module"]
    with torch.no_grad():
        module.factors.weight[3, 1] = float("nan")


def test_a_signed_torch_checkpoint_with_a_nan_weight_fails_the_finite_weights_check(
    tmp_path: Path,
) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (version,) = _train(config, TORCH, PHISHING[:64], every=64, before_checkpoint=_poison_torch)
    loaded = StoreLoader(config, LEARNING).load(TORCH.name, version)  # the signature is valid
    assert loaded.predict_many([{"a": 1.0}])
    evaluator, _ = _evaluator(config)
    result = evaluator.evaluate(TORCH.name, version, HOLDOUT, "log_loss")
    assert result.checks == {CHECK_LOADS: True, CHECK_FINITE_WEIGHTS: False}
    assert result.value is None
    assert result.error is not None
    assert "tensor factors.weight holds 1 non-finite value(s)" in result.error
    assert "(first at [3, 1]: nan)" in result.error


def _poison_river(trainer: OnlineTrainer) -> None:
    trainer.adapter.live_objects()["model"]["LogisticRegression"]._weights["https"] = math.inf


def test_a_signed_river_checkpoint_with_an_inf_weight_fails_the_finite_weights_check(
    tmp_path: Path,
) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (version,) = _train(config, RIVER, PHISHING[:64], every=64, before_checkpoint=_poison_river)
    evaluator, _ = _evaluator(config)
    result = evaluator.evaluate(RIVER.name, version, HOLDOUT, "accuracy")
    assert result.checks == {CHECK_LOADS: True, CHECK_FINITE_WEIGHTS: False}
    assert result.error is not None
    assert "._weights['https'] is inf" in result.error  # the pipeline's LogisticRegression


def test_a_version_evaluated_again_is_not_loaded_again(
    store: StoreConfig, river_versions: list[str]
) -> None:
    evaluator, loader = _evaluator(store, cache_size=1)
    early, late = river_versions
    evaluator.evaluate(RIVER.name, late, HOLDOUT[:50], "accuracy")
    evaluator.evaluate(RIVER.name, late, HOLDOUT, "log_loss")
    assert loader.calls == [(RIVER.name, late)]
    evaluator.evaluate(RIVER.name, early, HOLDOUT, "accuracy")  # evicts late (cache_size 1)
    evaluator.evaluate(RIVER.name, late, HOLDOUT, "accuracy")
    assert loader.calls == [(RIVER.name, late), (RIVER.name, early), (RIVER.name, late)]
    assert evaluator.cached(RIVER.name) == [late]
    evaluator.forget(RIVER.name, keep=[early])
    assert evaluator.cached(RIVER.name) == []
    evaluator.evaluate(RIVER.name, late, HOLDOUT, "accuracy")
    assert len(loader.calls) == 4


def test_forget_keeps_the_versions_named(store: StoreConfig, river_versions: list[str]) -> None:
    evaluator, loader = _evaluator(store)
    for version in river_versions:
        evaluator.evaluate(RIVER.name, version, HOLDOUT[:10], "accuracy")
    evaluator.forget(RIVER.name, keep=[river_versions[0]])
    assert evaluator.cached(RIVER.name) == [river_versions[0]]
    evaluator.evaluate(RIVER.name, river_versions[0], HOLDOUT[:10], "accuracy")
    assert len(loader.calls) == 2


def test_examples_the_model_refuses_are_skipped_and_counted(
    store: StoreConfig, river_versions: list[str]
) -> None:
    evaluator, _ = _evaluator(store)
    refused = [
        HoldoutExample("bad-label", HOLDOUT[0].features, "maybe", 1.0, 0, "v"),
        HoldoutExample("bad-feature", {**HOLDOUT[1].features, "https": "yes"}, True, 1.0, 0, "v"),
    ]
    result = evaluator.evaluate(RIVER.name, river_versions[-1], [*refused, *HOLDOUT], "accuracy")
    assert result.passed, result.error
    assert result.n == len(HOLDOUT)
    assert result.skipped == 2
    assert result.skipped_reason is not None
    assert "bad-label" in result.skipped_reason
    assert "label" in result.skipped_reason
    clean = evaluator.evaluate(RIVER.name, river_versions[-1], HOLDOUT, "accuracy")
    assert result.value == clean.value
    # losses are indexed in the examples given: the two refused ones come first
    assert result.losses is not None
    assert clean.losses is not None
    assert {i - 2: loss for i, loss in result.losses.items()} == clean.losses
    nothing = evaluator.evaluate(RIVER.name, river_versions[-1], refused, "accuracy")
    assert not nothing.passed
    assert nothing.n == 0
    assert nothing.value is None
    assert "no example scored" in (nothing.error or "")
    assert "bad-label" in (nothing.error or "")


def test_an_unknown_metric_is_a_config_error(store: StoreConfig, river_versions: list[str]) -> None:
    evaluator, _ = _evaluator(store)
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluator.evaluate(RIVER.name, river_versions[0], HOLDOUT, "f1")


# -- adapters whose model code misbehaves (no store needed) ---------------------------------


class Exploding(base.Classifier):
    """Scores 0.7 for True, and raises on an input with ``boom``."""

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        pass

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:
        if x.get("boom"):
            raise RuntimeError("boom")
        return {True: 0.7, False: 0.3}


class Overconfident(Exploding):
    """Scores above 1."""

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:
        return {True: 1.5, False: -0.5}


class NanRegressor(base.Regressor):
    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        pass

    def predict_one(self, x: dict[str, Any]) -> float:
        return math.nan if x.get("a", 0.0) > 0.5 else 1.0


class FakeLoader:
    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def load(self, model: str, version: str) -> ModelAdapter:
        obj = self.make()
        if isinstance(obj, Exception):
            raise obj
        config = RIVER.model_copy(update={"name": model, "feature_values": "any"})
        return RiverAdapter(config, model=obj)


def _examples(features: Sequence[dict[str, Any]]) -> list[HoldoutExample]:
    return [HoldoutExample(f"r{i}", x, True, 1.0, i, "v") for i, x in enumerate(features)]


def test_a_prediction_failure_fails_the_predictions_check_with_the_index() -> None:
    evaluator = StoreEvaluator(FakeLoader(Exploding), {"m": RIVER}, batch_size=4)
    xs = [{"a": 0.1}] * 6 + [{"boom": 1.0}] + [{"a": 0.2}] * 3
    result = evaluator.evaluate("m", "m-1", _examples(xs), "accuracy")
    assert result.checks == {
        CHECK_LOADS: True,
        CHECK_FINITE_WEIGHTS: True,
        CHECK_FINITE_PREDICTIONS: False,
    }
    assert result.error is not None
    assert "(example 6)" in result.error  # second batch of 4, its index 2
    assert "boom" in result.error
    fine = evaluator.evaluate("m", "m-1", _examples([{"a": 0.1}] * 5), "accuracy")
    assert fine.passed
    assert fine.value == 1.0


def test_scores_outside_zero_one_and_non_finite_values_fail_the_predictions_check() -> None:
    over = StoreEvaluator(FakeLoader(Overconfident), {"m": RIVER})
    result = over.evaluate("m", "m-1", _examples([{"a": 0.1}]), "log_loss")
    assert result.checks[CHECK_FINITE_PREDICTIONS] is False
    assert "not a probability" in (result.error or "")
    nan = StoreEvaluator(FakeLoader(NanRegressor), {"m": RIVER})
    examples = [HoldoutExample(f"r{i}", {"a": i / 10}, 1.0, 1.0, i, "v") for i in range(10)]
    result = nan.evaluate("m", "m-1", examples[:5], "mae")
    assert result.passed
    assert result.value == 0.0
    result = nan.evaluate("m", "m-1", examples, "mae")
    assert result.checks[CHECK_FINITE_PREDICTIONS] is False
    assert "example 6" in (result.error or "")


def test_any_failure_of_the_loader_is_a_failed_load_check_not_an_exception() -> None:
    evaluator = StoreEvaluator(FakeLoader(lambda: RuntimeError("disk on fire")), {"m": RIVER})
    result = evaluator.evaluate("m", "m-1", _examples([{"a": 0.1}]), "accuracy")
    assert result.checks == {CHECK_LOADS: False}
    assert "RuntimeError: disk on fire" in (result.error or "")
    assert "model m version m-1" in (result.error or "")


def test_no_examples_is_no_value() -> None:
    evaluator = StoreEvaluator(FakeLoader(Exploding), {"m": RIVER})
    result = evaluator.evaluate("m", "m-1", [], "accuracy")
    assert result.n == 0
    assert result.value is None
    assert not result.passed


# -- the weight walks ------------------------------------------------------------------------


def test_no_river_estimator_the_allow_list_admits_is_reported_non_finite() -> None:
    from services.checkpoints.state import allowlist_gen

    fresh = [(name, est) for name, est, _, _ in allowlist_gen._estimators()]
    trained = [(s.name, s.obj) for s in allowlist_gen._learned_estimators()]
    assert len(trained) > 20
    for name, model in fresh + trained:
        assert river_problem(model) is None, name


def test_river_walk_finds_non_finite_numbers_wherever_they_are() -> None:
    import numpy as np

    model = linear_model.LogisticRegression()
    model.learn_one({"x": 1.0}, True)
    assert river_problem(model) is None
    model.intercept = math.nan
    assert river_problem(model) == "weight model.intercept is nan"
    model.intercept = 0.0
    model.optimizer.extra = [np.array([1.0, -np.inf])]  # an accumulator in an array
    assert "model.optimizer.extra[0]" in (river_problem(model) or "")
    model.optimizer.extra = [np.float32("inf")]
    assert "model.optimizer.extra[0] is inf" in (river_problem(model) or "")


def test_river_walk_is_bounded_and_says_so() -> None:
    deep: list[Any] = [1.0]
    for _ in range(50):
        deep = [deep]
    assert "nests deeper than 10" in (river_problem(deep, max_depth=10) or "")
    assert "more than 100 values" in (river_problem(list(range(1000)), max_items=100) or "")
    cyclic: list[Any] = [1.0]
    cyclic.append(cyclic)
    assert river_problem(cyclic) is None


def test_torch_walk_checks_buffers_too() -> None:
    module = torch.nn.BatchNorm1d(4)
    assert torch_problem(module) is None
    module.running_var[2] = math.inf
    assert "running_var" in (torch_problem(module) or "")
