"""The trainer's prequential metrics equal river's progressive_val_score."""

from __future__ import annotations

from typing import Any

import pytest
from river import datasets, evaluate, metrics, preprocessing, utils
from river.linear_model import LogisticRegression

from services.learning.config import ModelConfig, parse_config
from services.learning.sink import InMemorySink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.validation.base import is_held_out


def _config(batch_size: int, window: int) -> ModelConfig:
    steps = [
        {"factory": "river.preprocessing.StandardScaler"},
        {"factory": "river.linear_model.LogisticRegression"},
    ]
    data = {
        "model": [
            {
                "name": "phish",
                "kind": "river",
                "factory": {
                    "path": "services.learning.factory.pipeline",
                    "params": {"steps": steps},
                },
                "batch_size": batch_size,
                "metrics": {"names": ["accuracy", "log_loss"], "window": window},
                "triggers": {"every_n": None},
            }
        ]
    }
    return parse_config(data).model("phish")


@pytest.mark.parametrize("batch_size", [1, 25, 50])
def test_prequential_metrics_equal_progressive_val_score_exactly(batch_size: int) -> None:
    """With the default 10% holdout: the reference sees the examples the trainer
    learns (not the held-out ones), in order, up to the last full batch."""
    config = _config(batch_size, window=200)
    assert config.promotion.holdout_percent == 10
    trainer = OnlineTrainer(config, InMemorySink())
    learned: list[tuple[dict[str, Any], Any]] = []
    held: list[int] = []
    for i, ex in enumerate(examples_from(datasets.Phishing(), "phish")):
        trainer.process(ex, topic="training-examples", partition=0, offset=i)
        if is_held_out(ex.request_id, 10):
            held.append(i)
        else:
            learned.append((dict(ex.features), ex.label))
    trained = len(learned) // batch_size * batch_size
    assert 1000 < len(learned) < 1250
    # counted up to the last batch boundary, like the offsets (the open batch is re-read)
    position = trainer.position("training-examples", 0)
    assert position is not None
    assert trainer.held_out == sum(i < position for i in held)
    assert trainer.pending == len(learned) - trained
    assert trainer.examples_seen == trained
    reference = learned[:trained]

    def model() -> object:
        return preprocessing.StandardScaler() | LogisticRegression()

    values = trainer.metrics.values()
    accuracy: Any = metrics.Accuracy
    log_loss: Any = metrics.LogLoss
    checks: list[tuple[str, Any]] = [
        ("accuracy_total", accuracy()),
        ("log_loss_total", log_loss()),
        ("accuracy", utils.Rolling(accuracy, window_size=200)),
        ("log_loss", utils.Rolling(log_loss, window_size=200)),
    ]
    for name, metric in checks:
        expected = evaluate.progressive_val_score(reference, model(), metric)
        assert values[name] == expected.get(), name


def test_window_metric_follows_recent_examples_only() -> None:
    trainer = OnlineTrainer(_config(10, window=50), InMemorySink())
    for i, ex in enumerate(examples_from(datasets.Phishing(), "phish", limit=400)):
        trainer.process(ex, topic="t", partition=0, offset=i)
    values = trainer.metrics.values()
    # The model improves: its recent accuracy is above its all-time accuracy.
    assert values["accuracy"] > values["accuracy_total"]
