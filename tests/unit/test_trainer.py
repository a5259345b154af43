"""OnlineTrainer: dedup, offsets, digest, restore, bitwise-deterministic replay."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from river import datasets

from schemas.errors import ConfigError
from services.learning.config import ModelConfig, example_path, load_config, parse_config
from services.learning.sink import InMemorySink
from services.learning.synthetic import LocalExample, examples_from
from services.learning.trainer import OnlineTrainer
from services.validation.base import is_held_out

TOPIC = "training-examples"


def river_config(**overrides: Any) -> ModelConfig:
    """A small river model; no holdout unless asked (these tests count what is
    learned; holdout has its own tests in test_trainer_holdout.py)."""
    data: dict[str, Any] = {
        "name": "m",
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "batch_size": 8,
        "triggers": {"every_n": 40},
        "drift": [{"kind": "ADWIN"}, {"kind": "DDM"}],
        "promotion": {"holdout_percent": 0},
    }
    data.update(overrides)
    return parse_config({"model": [data]}).model("m")


def torch_config(holdout_percent: float = 0.0) -> ModelConfig:
    cfg = load_config(example_path("torch_fm")).model("torch-fm")
    promotion = cfg.promotion.model_copy(update={"holdout_percent": holdout_percent})
    return cfg.model_copy(update={"name": "m", "batch_size": 8, "promotion": promotion})


def phishing(n: int = 300) -> list[LocalExample]:
    return list(examples_from(datasets.Phishing(), "m", limit=n))


def feed(trainer: OnlineTrainer, records: Sequence[tuple[int, int, LocalExample]]) -> None:
    for partition, offset, ex in records:
        trainer.process(ex, topic=TOPIC, partition=partition, offset=offset)


def as_records(examples: Sequence[LocalExample], partitions: int = 2) -> list[tuple[int, int, Any]]:
    """Examples spread round-robin over partitions, in a fixed interleaved read order."""
    next_offset = [0] * partitions
    records = []
    for i, ex in enumerate(examples):
        p = i % partitions
        records.append((p, next_offset[p], ex))
        next_offset[p] += 1
    return records


def test_duplicates_within_the_horizon_are_skipped_and_counted() -> None:
    trainer = OnlineTrainer(river_config(), InMemorySink())
    exs = phishing(16)
    stream = [*exs[:8], exs[3], *exs[8:], exs[0], exs[15]]
    for offset, ex in enumerate(stream):
        trainer.process(ex, topic=TOPIC, partition=0, offset=offset)
    assert trainer.examples_seen == 16
    assert trainer.duplicates == 3
    assert trainer.position(TOPIC, 0) == len(stream)


def test_dedup_horizon_is_bounded() -> None:
    trainer = OnlineTrainer(river_config(dedup_horizon=8, batch_size=1), InMemorySink())
    exs = phishing(20)
    feed(trainer, [(0, i, ex) for i, ex in enumerate([*exs, exs[0], exs[19]])])
    # exs[0] fell out of the 8-id horizon and is trained again; exs[19] is still remembered.
    assert trainer.examples_seen == 21
    assert trainer.duplicates == 1


def test_records_before_the_recorded_offset_are_not_trained_twice() -> None:
    trainer = OnlineTrainer(river_config(batch_size=4), InMemorySink())
    exs = phishing(8)
    feed(trainer, [(0, i, ex) for i, ex in enumerate(exs)])
    outcome = trainer.process(exs[2], topic=TOPIC, partition=0, offset=2)
    assert outcome.status == "replayed"
    assert trainer.examples_seen == 8


def test_offsets_advance_only_at_batch_boundaries() -> None:
    trainer = OnlineTrainer(river_config(batch_size=4), InMemorySink())
    exs = phishing(6)
    feed(trainer, [(0, i, ex) for i, ex in enumerate(exs)])
    assert trainer.pending == 2
    assert trainer.position(TOPIC, 0) == 4  # the open batch is re-read after a restart


def test_other_models_and_bad_labels_do_not_stop_training() -> None:
    trainer = OnlineTrainer(torch_config(), InMemorySink())
    exs = phishing(8)
    other = LocalExample("o-1", "someone-else", {"a": 1.0}, True)
    bad = LocalExample("b-1", "m", {"a": 1.0}, "maybe")
    outcomes = [
        trainer.process(e, topic=TOPIC, partition=0, offset=i)
        for i, e in enumerate([other, bad, *exs])
    ]
    assert [o.status for o in outcomes[:2]] == ["other_model", "rejected"]
    assert "not binary" in (outcomes[1].reason or "")
    assert outcomes[-1].status == "trained"
    assert (trainer.examples_seen, trainer.rejected) == (8, 1)
    assert trainer.position(TOPIC, 0) == 10


def test_digest_is_order_independent_and_tracks_the_set_trained() -> None:
    exs = phishing(64)
    shuffled = list(exs)
    random.Random(1).shuffle(shuffled)
    a = OnlineTrainer(river_config(), InMemorySink())
    b = OnlineTrainer(river_config(), InMemorySink())
    c = OnlineTrainer(river_config(), InMemorySink())
    feed(a, [(0, i, e) for i, e in enumerate(exs)])
    feed(b, [(0, i, e) for i, e in enumerate(shuffled)])
    feed(c, [(0, i, e) for i, e in enumerate(exs[:-8])])
    assert a.digest == b.digest
    assert a.digest != c.digest


def _run(config: ModelConfig, records: Sequence[tuple[int, int, Any]]) -> OnlineTrainer:
    trainer = OnlineTrainer(config, InMemorySink())
    feed(trainer, records)
    return trainer


@pytest.mark.parametrize("kind", ["river", "torch"])
def test_restarts_from_checkpoints_reproduce_the_uninterrupted_run_bitwise(kind: str) -> None:
    # With the shipped holdout share: held-out records are skipped alike after each restart.
    config = (
        river_config(promotion={"holdout_percent": 10}) if kind == "river" else torch_config(10)
    )
    config = config.model_copy(
        update={"triggers": config.triggers.model_copy(update={"every_n": 24})}
    )
    records = as_records(phishing(400))
    clean = _run(config, records)

    # "kill" at random moments: drop the trainer (open batch and all), restore
    # from the sink's newest checkpoint and re-read from the recorded offsets.
    sink = InMemorySink()
    rng = random.Random(7)
    kills = sorted(rng.sample(range(1, len(records)), 12))
    trainer = OnlineTrainer(config, sink)
    position = 0
    for kill in [*kills, len(records)]:
        while position < kill:
            p, offset, ex = records[position]
            trainer.process(ex, topic=TOPIC, partition=p, offset=offset)
            position += 1
        if kill == len(records):
            break
        trainer = OnlineTrainer(config, sink)
        trainer.restore()
        resume = [trainer.position(TOPIC, p) or 0 for p in range(2)]
        position = next(i for i, (p, offset, _) in enumerate(records) if offset >= resume[p])
        # Records of the other partition between here and its resume point are
        # re-delivered too and skipped as already reflected in the state.
    held = sum(is_held_out(ex.request_id, 10) for _, _, ex in records)
    assert 0 < held < 80
    assert (trainer.examples_seen, trainer.held_out) == (clean.examples_seen, clean.held_out)
    assert clean.examples_seen + clean.pending == 400 - held
    assert trainer.adapter.state_digest() == clean.adapter.state_digest()
    assert trainer.digest == clean.digest
    assert trainer.metrics.values() == clean.metrics.values()
    assert trainer.drift.summary() == clean.drift.summary()


def test_restore_brings_back_offsets_seen_set_schedule_and_metrics() -> None:
    sink = InMemorySink()
    config = river_config(triggers={"every_n": 40, "adaptive": {"min_every_n": 10}})
    first = OnlineTrainer(config, sink)
    exs = phishing(100)
    feed(first, [(0, i, e) for i, e in enumerate(exs)])
    first.schedule.on_drift()
    record = first.checkpoint("manual", "test")
    second = OnlineTrainer(config, sink)
    assert second.restore() == record.version
    assert second.position(TOPIC, 0) == 96
    assert second.schedule.describe() == first.schedule.describe()
    assert second.metrics.values() == first.metrics.values()
    assert second.digest == first.digest
    # An example trained before the checkpoint is still a duplicate after restore.
    assert second.process(exs[5], topic=TOPIC, partition=1, offset=0).status == "duplicate"


def test_no_checkpoint_means_a_fresh_start() -> None:
    trainer = OnlineTrainer(river_config(), InMemorySink())
    assert trainer.restore() is None
    assert trainer.position(TOPIC, 0) is None


def test_shutdown_saves_unsaved_progress_once() -> None:
    sink = InMemorySink()
    trainer = OnlineTrainer(river_config(triggers={"every_n": 1000}), sink)
    feed(trainer, [(0, i, e) for i, e in enumerate(phishing(20))])
    assert [r.trigger for r in trainer.shutdown()] == ["shutdown"]
    assert sink.snapshots[-1].offsets == {TOPIC: {"0": 16}}
    assert trainer.shutdown() == []


def test_manual_request_is_honoured_at_the_next_tick() -> None:
    sink = InMemorySink()
    trainer = OnlineTrainer(river_config(triggers={"every_n": 1000}), sink)
    feed(trainer, [(0, i, e) for i, e in enumerate(phishing(10))])
    assert trainer.tick() == []
    trainer.request_checkpoint("operator asked")
    [record] = trainer.tick()
    assert (record.trigger, record.reason, record.examples_seen) == ("manual", "operator asked", 8)
    assert trainer.tick() == []


def test_reconfigure_checkpoints_first_then_applies_new_settings() -> None:
    sink = InMemorySink()
    config = river_config(triggers={"every_n": 1000})
    trainer = OnlineTrainer(config, sink)
    feed(trainer, [(0, i, e) for i, e in enumerate(phishing(20))])
    new = config.model_copy(update={"batch_size": 2})
    records = trainer.reconfigure(new)
    assert [r.trigger for r in records] == ["config_change"]
    assert sink.snapshots[0].config["batch_size"] == 8
    assert trainer.examples_seen == 20  # the open batch of 4 now exceeds the new size
    assert trainer.reconfigure(new) == []
    with pytest.raises(ConfigError, match="define the model"):
        trainer.reconfigure(new.model_copy(update={"kind": "torch"}))
