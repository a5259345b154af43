"""The trainer never learns held-out examples (issue 11).

A request in the model's holdout share (``is_held_out(request_id,
promotion.holdout_percent)``) is kept for the validation gateway: the
trainer consumes its record (offsets, so checkpoints cover it) and counts it,
but never scores, detects drift on, learns, remembers or digests it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from river import datasets

from schemas.codec import encode
from services.learning.config import ModelConfig, parse_config
from services.learning.pool import partition_of
from services.learning.sink import InMemorySink
from services.learning.synthetic import LocalExample, examples_from
from services.learning.trainer import OnlineTrainer
from services.validation.base import is_held_out
from tests.unit.test_worker_pool import PARTS, example, make_pool, records

TOPIC = "training-examples"


def config(holdout: float = 10.0, **overrides: Any) -> ModelConfig:
    data: dict[str, Any] = {
        "name": "m",
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "batch_size": 8,
        "triggers": {"every_n": 40},
        "drift": [{"kind": "ADWIN"}, {"kind": "DDM"}],
        "promotion": {"holdout_percent": holdout},
    }
    data.update(overrides)
    return parse_config({"model": [data]}).model("m")


def phishing(n: int) -> list[LocalExample]:
    return list(examples_from(datasets.Phishing(), "m", limit=n))


def held(examples: list[LocalExample], percent: float = 10.0) -> list[LocalExample]:
    return [ex for ex in examples if is_held_out(ex.request_id, percent)]


def kept(examples: list[LocalExample], percent: float = 10.0) -> list[LocalExample]:
    return [ex for ex in examples if not is_held_out(ex.request_id, percent)]


def run(trainer: OnlineTrainer, examples: list[LocalExample], start: int = 0) -> list[str]:
    return [
        trainer.process(ex, topic=TOPIC, partition=0, offset=start + i).status
        for i, ex in enumerate(examples)
    ]


def test_held_out_examples_are_never_learned_nor_scored() -> None:
    exs = phishing(400)
    others = kept(exs)
    assert 20 < len(exs) - len(others) < 80
    with_holdout = OnlineTrainer(config(), InMemorySink())
    run(with_holdout, exs)
    # the same model, trained only on the examples not held out, without holdout
    reference = OnlineTrainer(config(holdout=0), InMemorySink())
    run(reference, others)
    assert with_holdout.examples_seen == reference.examples_seen > 0
    assert with_holdout.adapter.state_digest() == reference.adapter.state_digest()
    assert with_holdout.metrics.values() == reference.metrics.values()
    assert with_holdout.drift.summary() == reference.drift.summary()
    assert with_holdout.digest == reference.digest


def test_held_out_records_are_counted_and_their_offsets_consumed() -> None:
    exs = phishing(200)
    sink = InMemorySink()
    trainer = OnlineTrainer(config(batch_size=1), sink)
    statuses = run(trainer, exs)
    expected = ["held_out" if is_held_out(ex.request_id, 10) else "trained" for ex in exs]
    assert statuses == expected
    assert trainer.held_out == len(held(exs))
    assert trainer.examples_seen == len(kept(exs))
    assert trainer.position(TOPIC, 0) == len(exs)  # every offset consumed, held out or not
    assert trainer.describe()["held_out"] == trainer.held_out
    record = trainer.checkpoint("manual", "test")
    assert record.offsets == {TOPIC: {"0": len(exs)}}
    assert sink.snapshots[-1].extra["held_out"] == len(held(exs))  # the manifest's extra


def test_held_out_records_in_an_open_batch_are_re_read_with_it() -> None:
    exs = phishing(100)
    trainer = OnlineTrainer(config(batch_size=4), InMemorySink())
    first = kept(exs)[0]
    stream = [first, *held(exs)[:3]]  # one learned example opens a batch; three held out
    assert run(trainer, stream) == ["buffered", "held_out", "held_out", "held_out"]
    # nothing is past a boundary yet: the records are re-read after a restart
    assert trainer.position(TOPIC, 0) is None
    assert trainer.held_out == 0
    run(trainer, kept(exs)[1:4], start=4)  # completes the batch
    assert trainer.position(TOPIC, 0) == 7
    assert (trainer.held_out, trainer.examples_seen) == (3, 4)


def test_the_share_is_by_request_not_by_example() -> None:
    request = held(phishing(100))[0].request_id
    trainer = OnlineTrainer(config(batch_size=1), InMemorySink())
    base = phishing(3)
    twins = [
        dataclasses.replace(ex, example_id=f"twin-{i}", request_id=request)
        for i, ex in enumerate(base)
    ]
    assert run(trainer, twins) == ["held_out"] * 3
    assert trainer.examples_seen == 0


def test_a_held_out_example_is_neither_rejected_nor_remembered() -> None:
    ex = held(phishing(100))[0]
    bad = dataclasses.replace(ex, label="maybe")
    trainer = OnlineTrainer(config(batch_size=1), InMemorySink())
    assert run(trainer, [bad, ex, ex]) == ["held_out"] * 3
    assert (trainer.rejected, trainer.duplicates, trainer.held_out) == (0, 0, 3)
    # without holdout the same example is learned: it was never in the dedup set
    trainer.reconfigure(config(holdout=0, batch_size=1))
    assert run(trainer, [ex], start=3) == ["trained"]


def test_holdout_zero_learns_everything() -> None:
    exs = phishing(96)
    trainer = OnlineTrainer(config(holdout=0), InMemorySink())
    run(trainer, exs)
    assert (trainer.examples_seen, trainer.held_out) == (96, 0)


def test_checkpoint_restore_and_replay_give_the_uninterrupted_state() -> None:
    exs = phishing(300)
    clean = OnlineTrainer(config(), InMemorySink())
    run(clean, exs)

    sink = InMemorySink()
    first = OnlineTrainer(config(), sink)
    run(first, exs[:150])
    first.checkpoint("manual", "mid-stream")
    at_checkpoint = first.held_out
    run(first, exs[150:170], start=150)  # lost: not checkpointed
    second = OnlineTrainer(config(), sink)
    assert second.restore() is not None
    assert second.held_out == at_checkpoint > 0
    start = second.position(TOPIC, 0) or 0
    run(second, exs[start:], start=start)
    assert second.digest == clean.digest
    assert second.adapter.state_digest() == clean.adapter.state_digest()
    assert (second.examples_seen, second.held_out) == (clean.examples_seen, clean.held_out)
    assert second.metrics.values() == clean.metrics.values()


def test_a_new_holdout_share_applies_from_the_reconfigure_on_alike_after_a_restore() -> None:
    """The open batch is learned under the old share; later records under the new one,
    by the running trainer and by one restored from the config_change checkpoint."""
    exs = phishing(200)
    quiet: dict[str, Any] = {"triggers": {"every_n": None}, "drift": []}
    old, new = config(**quiet), config(holdout=30, **quiet)
    sink = InMemorySink()
    running = OnlineTrainer(old, sink)
    run(running, exs[:101])
    assert running.pending > 0
    open_batch = running.pending
    seen = running.examples_seen
    [record] = running.reconfigure(new)
    assert record.trigger == "config_change"
    assert record.examples_seen == seen + open_batch  # the open batch went into it
    assert record.offsets == {TOPIC: {"0": 101}}
    restored = OnlineTrainer(new, sink)
    assert restored.restore() == record.version
    for trainer in (running, restored):
        run(trainer, exs[101:], start=101)
    assert running.digest == restored.digest
    assert running.adapter.state_digest() == restored.adapter.state_digest()
    assert running.held_out == restored.held_out
    # from the reconfigure on, the 30% share is what is left out
    after = OnlineTrainer(config(holdout=0, **quiet), InMemorySink())
    run(after, kept(exs[101:], 30.0))
    assert running.examples_seen == seen + open_batch + after.examples_seen


def test_the_pool_counts_held_out_records(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, config())
    home = partition_of("m", PARTS)
    pool.assign([home])
    values = [encode(example(i)) for i in range(64)]
    pool.handle(records(values, home))
    expected = sum(is_held_out(f"r{i}", 10) for i in range(64))
    assert expected > 0
    assert pool.stats.held_out == expected
    described = pool.describe()["models"]["m"]
    assert described["examples_seen"] + described["pending"] == 64 - expected
    pool.close()
