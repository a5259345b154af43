"""A batch is never half-learned: bad examples are refused on arrival, and a
learning failure validation could not foresee rolls the batch back."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

import pytest
from river import datasets, linear_model

from services.learning.adapters import ROLLBACK_HORIZON, RiverAdapter
from services.learning.config import ModelConfig, parse_config
from services.learning.sink import InMemorySink
from services.learning.synthetic import LocalExample, examples_from
from services.learning.trainer import OnlineTrainer

TOPIC = "training-examples"


def river_config(**overrides: Any) -> ModelConfig:
    data: dict[str, Any] = {
        "name": "m",
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "batch_size": 4,
        "triggers": {"every_n": 1000},
    }
    data.update(overrides)
    return parse_config({"model": [data]}).model("m")


def phishing(n: int) -> list[LocalExample]:
    return list(examples_from(datasets.Phishing(), "m", limit=n))


def run(trainer: OnlineTrainer, examples: list[LocalExample]) -> list[Any]:
    return [trainer.process(e, topic=TOPIC, partition=0, offset=i) for i, e in enumerate(examples)]


def weights(trainer: OnlineTrainer) -> dict[str, float]:
    return dict(trainer.adapter.live_objects()["model"].weights)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (LocalExample("bad", "m", {"empty_server_form_handler": 1.0}, "maybe"), "label"),
        (LocalExample("bad", "m", {"empty_server_form_handler": "high"}, True), "features."),
        (LocalExample("bad", "m", {"empty_server_form_handler": float("nan")}, True), "features."),
    ],
    ids=["label-maybe", "string-feature", "nan-feature"],
)
def test_bad_examples_are_refused_on_arrival_and_the_batch_is_learned_whole(
    bad: LocalExample, field: str
) -> None:
    good = phishing(12)
    clean = OnlineTrainer(river_config(), InMemorySink())
    run(clean, good)

    trainer = OnlineTrainer(river_config(), InMemorySink())
    outcomes = run(trainer, [*good[:2], bad, *good[2:]])

    refused = outcomes[2]
    assert refused.status == "rejected"
    assert (refused.field or "").startswith(field)
    assert trainer.rejected == 1
    assert (trainer.step, trainer.examples_seen) == (3, 12)
    assert trainer.position(TOPIC, 0) == 13
    assert weights(trainer) == weights(clean)


def test_binary_river_labels_follow_the_binary_rules() -> None:
    adapter = RiverAdapter(river_config())
    ex = phishing(1)[0]
    for label, expected in ((1, True), (0, False), ("yes", True), (False, False)):
        assert adapter.validate(LocalExample("e", "m", ex.features, label)) is expected
    fraud = RiverAdapter(river_config(positive_label="fraud"))
    assert fraud.validate(LocalExample("e", "m", ex.features, "fraud")) is True
    assert fraud.validate(LocalExample("e", "m", ex.features, "ok")) is False


def test_string_features_pass_for_models_that_take_categories() -> None:
    tree = RiverAdapter(river_config(factory={"path": "river.tree.HoeffdingTreeClassifier"}))
    multi = LocalExample("e", "m", {"colour": "red", "size": 2.0}, "cat")
    assert tree.validate(multi) == "cat"
    forced = RiverAdapter(river_config(feature_values="any"))
    assert forced.numeric_features is False
    trainer = OnlineTrainer(
        river_config(factory={"path": "river.tree.HoeffdingTreeClassifier"}), InMemorySink()
    )
    outcomes = run(
        trainer, [multi, *(LocalExample(f"e{i}", "m", {"colour": "b"}, "d") for i in range(3))]
    )
    assert outcomes[-1].status == "trained"


class Choking(linear_model.LogisticRegression):
    """Learns like LogisticRegression but raises on one feature value nobody validates."""

    def learn_one(self, x: dict[Hashable, Any], y: bool | str | int, w: float = 1.0) -> None:
        super().learn_one(x, y, w)  # the weights change first: a half-learned example
        if x.get("boom"):
            raise RuntimeError("the model cannot take this example")


def choking_trainer() -> OnlineTrainer:
    config = river_config()
    return OnlineTrainer(config, InMemorySink(), adapter=RiverAdapter(config, model=Choking()))


def test_a_learning_failure_rolls_the_batch_back_and_learns_the_rest() -> None:
    good = phishing(8)
    boom = LocalExample("boom", "m", {**good[0].features, "boom": True}, True)
    trainer = choking_trainer()
    outcomes = run(trainer, [*good[:2], boom, *good[2:]])

    trained = [o for o in outcomes if o.status == "trained"]
    assert len(trained) == 2  # [g0 g1 boom g2] learned without boom, then [g3 .. g6]
    failed = trained[0].failed
    assert [(f.example.example_id, f.offset) for f in failed] == [("boom", 2)]
    assert "cannot take this example" in failed[0].reason
    assert (trainer.failed, trainer.examples_seen, trainer.pending) == (1, 7, 1)
    reference = Choking()
    for ex in good[:7]:
        x = cast("dict[Hashable, Any]", dict(ex.features))
        reference.learn_one(x, bool(ex.label))
    assert weights(trainer) == dict(reference.weights)


@pytest.mark.parametrize("before", [ROLLBACK_HORIZON - 4, ROLLBACK_HORIZON + 76])
def test_a_rollback_long_after_the_last_copy_restores_the_pre_batch_model(before: int) -> None:
    """The adapter copies the model only every ROLLBACK_HORIZON examples and learns the
    examples since again on a failure: the trainer ends exactly where one that learned
    the same examples without the failing one does (model, metrics, drift, digest)."""
    good = phishing(before + 12)
    boom = LocalExample("boom", "m", {**good[0].features, "boom": True}, True)
    config = river_config(promotion={"holdout_percent": 0})  # every example is learned
    trainer = OnlineTrainer(config, InMemorySink(), adapter=RiverAdapter(config, model=Choking()))
    outcomes = run(trainer, [*good[:before], boom, *good[before:]])
    assert [f.example.example_id for o in outcomes for f in o.failed] == ["boom"]
    learned = good[: len(good) - trainer.pending]
    assert trainer.examples_seen == len(learned) > ROLLBACK_HORIZON

    one_by_one = config.model_copy(update={"batch_size": 1})
    clean = OnlineTrainer(
        one_by_one, InMemorySink(), adapter=RiverAdapter(one_by_one, model=Choking())
    )
    run(clean, learned)
    assert (trainer.examples_seen, trainer.digest) == (clean.examples_seen, clean.digest)
    assert weights(trainer) == weights(clean)
    model, reference = (t.adapter.live_objects()["model"] for t in (trainer, clean))
    assert model.intercept == reference.intercept
    assert trainer.metrics.values() == clean.metrics.values()
    assert trainer.drift.summary() == clean.drift.summary()
