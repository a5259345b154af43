"""The trainer through the real Checkpointer and CheckpointStore (local directories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from river import datasets

from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_reader
from services.checkpoints.store import CheckpointStore
from services.learning.adapters import build_adapter
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink, load_into
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.validation.base import is_held_out

TOPIC = "training-examples"


def _config(kind: str) -> ModelConfig:
    name = "river_logreg" if kind == "river" else "torch_fm"
    cfg = load_config(example_path(name)).models[0]
    update: dict[str, Any] = {
        "name": "m",
        "batch_size": 10,
        "triggers": cfg.triggers.model_copy(update={"every_n": 50, "interval_s": None}),
    }
    if cfg.encoding is not None:
        update["encoding"] = cfg.encoding.model_copy(update={"buckets": 4096})
    return cfg.model_copy(update=update)


def _sink(root: Path) -> CheckpointerSink:
    store = CheckpointStore(StoreConfig(root=root, fsync=False))
    return CheckpointerSink(Checkpointer(store, CheckpointerConfig(async_saves=False)))


@pytest.mark.parametrize("kind", ["river", "torch"])
def test_checkpoints_round_trip_through_the_store(kind: str, tmp_path: Path) -> None:
    config = _config(kind)
    exs = list(examples_from(datasets.Phishing(), "m", limit=260))
    clean = OnlineTrainer(config, _sink(tmp_path / "clean"))
    for i, ex in enumerate(exs):
        clean.process(ex, topic=TOPIC, partition=0, offset=i)

    # The shipped 10% holdout: the 100th example learned completes the count checkpoint.
    learned = [i for i, ex in enumerate(exs) if not is_held_out(ex.request_id, 10)]
    boundary = learned[99] + 1
    assert config.promotion.holdout_percent == 10
    assert 100 < boundary < 137
    sink = _sink(tmp_path / "store")
    first = OnlineTrainer(config, sink)
    for i, ex in enumerate(exs[:137]):
        first.process(ex, topic=TOPIC, partition=0, offset=i)
    manifest = sink.last_manifest
    assert manifest.trigger == "count"
    assert manifest.offsets == {TOPIC: {"0": boundary}}
    assert manifest.examples_seen == 100
    assert manifest.extra["held_out"] == boundary - 100
    assert manifest.extra["schedule"]["interval"] == 50
    assert set(manifest.metrics) >= {"accuracy", "accuracy_total", "log_loss"}

    # A new process: restore from the store and seek to the recorded offset.
    second = OnlineTrainer(config, _sink(tmp_path / "store"))
    assert second.restore() == manifest.version
    assert second.digest == manifest.example_digest
    assert (second.examples_seen, second.held_out) == (100, boundary - 100)
    start = second.position(TOPIC, 0)
    assert start == boundary
    for i in range(start, len(exs)):
        second.process(exs[i], topic=TOPIC, partition=0, offset=i)
    assert second.adapter.state_digest() == clean.adapter.state_digest()
    assert second.digest == clean.digest
    assert second.metrics.values() == clean.metrics.values()
    assert second.held_out == clean.held_out


@pytest.mark.parametrize("kind", ["river", "torch"])
def test_a_read_only_reader_loads_a_trained_version_into_a_fresh_adapter(
    kind: str, tmp_path: Path
) -> None:
    """What a model server does: open_reader, load a version verified, put it in an adapter."""
    config = _config(kind)
    trainer = OnlineTrainer(config, _sink(tmp_path / "store"))
    stream = examples_from(datasets.Phishing(), "m")
    offset = 0
    while trainer.examples_seen < 100:  # 100 learned: the rest was held out
        trainer.process(next(stream), topic=TOPIC, partition=0, offset=offset)
        offset += 1
    trained = trainer.adapter.state_digest()

    reader = open_reader(StoreConfig(root=tmp_path / "store", fsync=False))
    version = reader.versions("m")[-1]
    assert reader.manifest("m", version).examples_seen == 100
    fresh = build_adapter(config)
    assert fresh.state_digest() != trained
    river = load_into(fresh, reader.load("m", version).state)
    assert fresh.state_digest() == trained  # the newest save is that of the 100th example
    assert "model" not in river
