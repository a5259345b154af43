"""The trainer's prequential accuracy through Kafka equals river's progressive validation.

``river.datasets.Phishing`` (1,250 examples, shipped with river) is written
in dataset order as TrainingExamples to ``training-examples``, keyed by the
model so that it all lands on the model's home partition (the trainer reads
a model's examples from one partition, in offset order). A
``driftloop worker --role trainer`` process trains the shipped river example
(standard scaler + logistic regression, ``services/learning/examples/river_logreg.toml``)
from it and is stopped with SIGTERM once caught up.

The shipped example holds out 10% of the requests (``promotion.holdout_percent``):
the trainer never learns nor scores those, so the reference is the dataset
without them (by the same :func:`~services.validation.base.is_held_out` of
each example's request_id), in order. Every checkpoint it committed must
report, as ``accuracy_total`` and ``log_loss_total``, exactly (``==``) what
``river.evaluate.progressive_val_score`` gives for a fresh model built from
the same configuration on the first ``examples_seen`` examples learned. The
micro-batch still open at shutdown is not trained: the last checkpoint
covers the learned examples up to the last full batch of 32, and so does the
reference it is compared with.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from river import datasets, evaluate, metrics

from schemas.codec import encode
from schemas.events import TrainingExample, training_example_id
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.factory import build
from services.learning.pool import partition_of
from services.validation.base import is_held_out
from tests.integration._procs import WorkerProcess, manifests, produce, worker_env

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "phishing-logreg"
#: checkpoint every this many examples (a multiple of the shipped batch size, 32)
EVERY_N = 320


def phishing() -> list[tuple[dict[str, Any], bool]]:
    """The Phishing dataset in river's order."""
    return [(dict(x), bool(y)) for x, y in datasets.Phishing()]


def model_toml() -> str:
    """The shipped river example, renamed, with count checkpoints every ``EVERY_N``."""
    text = example_path("river_logreg").read_text(encoding="utf-8")
    edited = text.replace('name = "river-logreg"', f'name = "{MODEL}"').replace(
        "every_n = 5000 ", f"every_n = {EVERY_N} "
    )
    assert edited.count(MODEL) == 1
    assert f"every_n = {EVERY_N} " in edited, "the shipped example changed; adapt this test"
    return edited


def request_id(i: int) -> str:
    return f"ph-r{i}"


def as_examples(rows: list[tuple[dict[str, Any], bool]]) -> Iterator[TrainingExample]:
    base = 1_700_000_000_000
    for i, (x, y) in enumerate(rows):
        rid, fid = request_id(i), f"ph-f{i}"
        yield TrainingExample.new(
            event_id=f"ph-e{i}",
            ts=base + i,
            example_id=training_example_id(rid, fid),
            request_id=rid,
            model=MODEL,
            model_version="v0",
            features=x,
            label=y,
            inference_event_id=f"ph-i{i}",
            feedback_event_id=fid,
            inference_ts=base + i,
            feedback_ts=base + i + 100,
            join_latency_ms=100,
        )


#: the metrics compared, by the name the trainer reports them under
REFERENCE_METRICS: dict[str, Any] = {
    "accuracy_total": metrics.Accuracy,
    "log_loss_total": metrics.LogLoss,
}


def progressive(
    config: ModelConfig, rows: list[tuple[dict[str, Any], bool]], n: int
) -> dict[str, float]:
    """``progressive_val_score`` of a fresh model from ``config`` on the first ``n`` rows."""
    out: dict[str, float] = {}
    for name, metric_type in REFERENCE_METRICS.items():
        model = build(config.factory.path, config.factory.params)
        stream: Iterable[Any] = itertools.islice(rows, n)
        out[name] = float(evaluate.progressive_val_score(stream, model, metric_type()).get())
    return out


@pytest.mark.timeout(240)
def test_prequential_metrics_equal_river_progressive_val_score(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = phishing()
    assert len(rows) == 1250
    config_path = tmp_path / "models.toml"
    config_path.write_text(model_toml())
    config = load_config(config_path).model(MODEL)
    percent = config.promotion.holdout_percent
    assert percent == 10  # the shipped share
    held = [i for i in range(len(rows)) if is_held_out(request_id(i), percent)]
    learned = [row for i, row in enumerate(rows) if not is_held_out(request_id(i), percent)]
    assert 1000 < len(learned) < 1250
    trained = len(learned) - len(learned) % config.batch_size  # the open batch stays untrained

    produce(
        sandbox,
        sandbox.topics.training_examples,
        ((MODEL.encode(), encode(e)) for e in as_examples(rows)),
    )
    store = tmp_path / "store"
    env = worker_env(sandbox, app_id=f"preq-{sandbox.name}", store=store)
    trainer = WorkerProcess("trainer", env, tmp_path / "trainer.log", config=config_path)
    try:
        partition = partition_of(MODEL, sandbox.topics.partitions)
        assert trainer.wait_for(f"trainer caught up: partition {partition} at offset {len(rows)}")
    finally:
        code = trainer.terminate()
    assert code == 0, trainer.text()[-3000:]

    committed = manifests(store, MODEL)
    assert committed, trainer.text()[-3000:]
    final = committed[-1]
    assert (final.trigger, final.examples_seen) == ("shutdown", trained)
    # held-out records are consumed and counted up to the last boundary, like the offsets
    boundary = final.offsets[sandbox.topics.training_examples][str(partition)]
    assert final.extra["held_out"] == sum(i < boundary for i in held) > 0
    assert final.metrics["accuracy_total"] > 0.8  # it learned something
    positions = [m.examples_seen for m in committed]
    assert positions[:3] == [EVERY_N, 2 * EVERY_N, 3 * EVERY_N], positions
    for manifest in committed:
        reported = {k: manifest.metrics[k] for k in REFERENCE_METRICS}
        expected = progressive(config, learned, manifest.examples_seen)
        assert reported == expected, (manifest.version, manifest.trigger, manifest.examples_seen)
