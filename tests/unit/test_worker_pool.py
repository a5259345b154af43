"""TrainerPool: the trainer agent's logic without faust, on a real checkpoint store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import decode, encode
from schemas.events import CheckpointEvent, DeadLetter, TrainingExample, training_example_id
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.config import TopicsConfig
from services.deadletters import RawRecord
from services.learning.config import ModelConfig, parse_config
from services.learning.pool import Outgoing, TrainerPool, partition_of
from services.publish import InMemoryPublisher

TOPIC = "training-examples"
PARTS = 3


def config(name: str = "m", **overrides: Any) -> ModelConfig:
    """A small river model; no holdout unless asked (these tests and those that
    borrow this helper count what is learned; holdout has its own tests in
    test_trainer_holdout.py)."""
    data: dict[str, Any] = {
        "name": name,
        "kind": "river",
        "task": "classification",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "batch_size": 4,
        "triggers": {"every_n": 8},
        "promotion": {"holdout_percent": 0},
    }
    data.update(overrides)
    return parse_config({"model": [data]}).model(name)


def example(i: int, model: str = "m", label: Any = None) -> TrainingExample:
    rid, fid = f"r{i}", f"f{i}"
    return TrainingExample.new(
        example_id=training_example_id(rid, fid),
        request_id=rid,
        model=model,
        model_version="v0",
        features={"x": float(i % 7), "y": float(i % 3)},
        label=(i % 2 == 0) if label is None else label,
        inference_event_id=f"i{i}",
        feedback_event_id=fid,
        inference_ts=1,
        feedback_ts=2,
        join_latency_ms=1,
    )


def records(values: list[bytes], partition: int, start: int = 0) -> list[RawRecord]:
    return [RawRecord(TOPIC, partition, start + i, b"m", value) for i, value in enumerate(values)]


def make_pool(root: Path, *models: ModelConfig) -> TrainerPool:
    store = CheckpointStore(StoreConfig(root=root, fsync=False))
    return TrainerPool(models or (config(),), store, topic=TOPIC, partitions=PARTS)


@pytest.fixture
def home() -> int:
    return partition_of("m", PARTS)


def sent(pool_output: list[Outgoing], kind: str) -> list[bytes]:
    """The bytes of the ``kind`` events the pool asks to publish, as a publisher sends them."""
    twin = InMemoryPublisher()
    for event in pool_output:
        twin.publish(event)
    twin.flush()
    topic = {
        "checkpoints": TopicsConfig().checkpoint_events,
        "dead_letters": TopicsConfig().dead_letters,
    }[kind]
    return [encode(event) for name, _, event in twin.sent if name == topic]


def test_partition_of_matches_the_partitioner_faust_producers_use() -> None:
    from aiokafka.partitioner import DefaultPartitioner  # the joiner's producer (faust)

    for name in ("m", "fraud", "river-logreg", "torch-fm", "eo-logreg"):
        for parts in (1, 3, 12):
            everything = list(range(parts))
            expected = DefaultPartitioner()(name.encode(), everything, everything)
            assert partition_of(name, parts) == expected


def test_a_fresh_model_starts_at_offset_zero_of_its_own_partition_only(
    tmp_path: Path, home: int
) -> None:
    pool = make_pool(tmp_path)
    assert pool.assign(range(PARTS)) == {home: 0}
    assert pool.assign(p for p in range(PARTS) if p != home) == {}
    assert pool.active() == []


def test_checkpoint_events_follow_committed_manifests(tmp_path: Path, home: int) -> None:
    pool = make_pool(tmp_path)
    pool.assign([home])
    out = pool.handle(records([encode(example(i)) for i in range(16)], home)) + pool.flush()
    events = [decode(CheckpointEvent, v) for v in sent(out, "checkpoints")]
    assert [e.examples_seen for e in events] == [8, 16]
    for event in events:
        manifest_file = Path(event.location) / "manifest.json"
        assert hashlib.sha256(manifest_file.read_bytes()).hexdigest() == event.manifest_sha256
        assert event.event_id == f"checkpoint:{event.version}"


def test_bad_records_become_dead_letters_and_training_goes_on(tmp_path: Path, home: int) -> None:
    regression = config(task="regression", factory={"path": "river.linear_model.LinearRegression"})
    pool = make_pool(tmp_path, regression)
    pool.assign([home])
    values = [encode(example(i, label=float(i % 5))) for i in range(8)]
    values.insert(3, b"not json")
    values.insert(5, encode(example(100, label="maybe")))  # not a number: no regression target
    out = pool.handle(records(values, home)) + pool.flush()
    letters = [decode(DeadLetter, v) for v in sent(out, "dead_letters")]
    assert [(d.source_offset, d.error_kind) for d in letters] == [(3, "decode"), (5, "validation")]
    assert [decode(CheckpointEvent, v).examples_seen for v in sent(out, "checkpoints")] == [8]


def test_examples_a_binary_river_model_cannot_take_are_refused_before_the_batch(
    tmp_path: Path, home: int
) -> None:
    pool = make_pool(tmp_path)  # river LogisticRegression: bool labels, numeric features
    pool.assign([home])
    values = [encode(example(i)) for i in range(8)]
    values.insert(2, encode(example(100, label="maybe")))
    bad_feature = example(101).model_copy(update={"features": {"x": "high", "y": 1.0}})
    values.insert(5, encode(bad_feature))
    out = pool.handle(records(values, home)) + pool.flush()
    letters = [decode(DeadLetter, v) for v in sent(out, "dead_letters")]
    assert [(d.source_offset, d.error_kind, d.field) for d in letters] == [
        (2, "validation", "label"),
        (5, "validation", "features.x"),
    ]
    (event,) = [decode(CheckpointEvent, v) for v in sent(out, "checkpoints")]
    assert (event.examples_seen, event.step) == (8, 2)

    clean = make_pool(tmp_path / "clean")
    clean.assign([home])
    clean.handle(records([encode(example(i)) for i in range(8)], home))
    clean.flush()
    a, b = pool.store.latest("m"), clean.store.latest("m")
    assert a is not None
    assert b is not None
    assert (a.state_digest, a.example_digest) == (b.state_digest, b.example_digest)


def test_models_follow_the_topics_real_partition_count(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)  # configured for 3 partitions
    real = partition_of("m", 5)
    assert pool.set_partitions(5) is True
    assert pool.assign(range(5)) == {real: 0}
    out = pool.handle(records([encode(example(i)) for i in range(8)], real)) + pool.flush()
    assert sent(out, "dead_letters") == []
    assert [decode(CheckpointEvent, v).examples_seen for v in sent(out, "checkpoints")] == [8]
    assert pool.set_partitions(5) is False


def test_an_example_on_another_partition_is_misrouted(tmp_path: Path, home: int) -> None:
    other = (home + 1) % PARTS
    pool = make_pool(tmp_path, config("m"), config("n"))
    pool.assign(range(PARTS))
    if partition_of("n", PARTS) != other:
        pytest.skip("model n does not live on the neighbouring partition")
    out = pool.handle(records([encode(example(1, model="m"))], other)) + pool.flush()
    (letter,) = [decode(DeadLetter, v) for v in sent(out, "dead_letters")]
    assert letter.error_kind == "misrouted"


def test_restart_restores_and_seeks_to_the_checkpointed_offset(tmp_path: Path, home: int) -> None:
    values = [encode(example(i)) for i in range(30)]
    first = make_pool(tmp_path)
    first.assign([home])
    first.handle(records(values[:13], home))  # checkpoint at 8 examples; 5 more unsaved
    first.flush()
    # "kill -9": the pool is dropped without shutdown.
    second = make_pool(tmp_path)
    assert second.assign([home]) == {home: 8}
    restored = sent(second.drain(), "checkpoints")
    assert [decode(CheckpointEvent, v).examples_seen for v in restored] == [8]  # republished
    # faust may deliver records it fetched before the seek: the pool keeps exact order.
    out = (
        second.handle(records(values[20:22], home, start=20) + records(values[8:], home, 8))
        + second.flush()
    )
    assert second.stats.gaps == 2
    assert [decode(CheckpointEvent, v).examples_seen for v in sent(out, "checkpoints")] == [16, 24]

    clean = make_pool(tmp_path / "clean")
    clean.assign([home])
    clean.handle(records(values, home))
    clean.flush()
    a = second.store.latest("m")
    b = clean.store.latest("m")
    assert a is not None
    assert b is not None
    assert (a.state_digest, a.example_digest, a.offsets) == (
        b.state_digest,
        b.example_digest,
        b.offsets,
    )


def test_replayed_records_are_skipped_without_counting_duplicates(
    tmp_path: Path, home: int
) -> None:
    pool = make_pool(tmp_path)
    pool.assign([home])
    values = [encode(example(i)) for i in range(6)]
    pool.handle(records(values, home))
    pool.flush()
    pool.handle(records(values, home))
    pool.flush()
    assert pool.stats.replayed == 6
    assert pool.stats.duplicates == 0


def test_shutdown_checkpoints_unsaved_progress_once(tmp_path: Path, home: int) -> None:
    pool = make_pool(tmp_path)
    pool.assign([home])
    pool.handle(records([encode(example(i)) for i in range(13)], home))  # count checkpoint at 8
    pool.flush()
    out = pool.shutdown()
    (event,) = [decode(CheckpointEvent, v) for v in sent(out, "checkpoints")]
    assert (event.trigger, event.examples_seen) == ("shutdown", 12)
    assert pool.shutdown() == []
    latest = pool.store.latest("m")
    assert latest is not None
    assert latest.offsets == {TOPIC: {str(home): 12}}  # the open batch is re-read next time


def test_revoked_models_stop_and_a_later_assignment_restores_them(
    tmp_path: Path, home: int
) -> None:
    pool = make_pool(tmp_path)
    pool.assign([home])
    out = pool.handle(records([encode(example(i)) for i in range(11)], home))  # checkpoint at 8
    pool.revoke([home])  # waits for a pending commit and queues its event
    assert pool.active() == []
    out += pool.drain()
    assert [decode(CheckpointEvent, v).examples_seen for v in sent(out, "checkpoints")] == [8]
    assert pool.tick() == []  # nothing may checkpoint a model another worker now trains
    assert pool.assign([home]) == {home: 8}


def test_the_pool_is_plain_python_without_faust() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import services.learning.pool as p; "
        "assert p.TrainerPool and 'faust' not in sys.modules, sorted(sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_new_settings_checkpoint_first_and_a_redefined_model_is_refused(
    tmp_path: Path, home: int
) -> None:
    pool = make_pool(tmp_path)
    pool.assign({home})
    pool.handle(records([encode(example(i)) for i in range(6)], home))  # one batch of 4 trained
    pool.flush()
    out = pool.reconfigure([config(triggers={"every_n": 2})]) + pool.flush()
    published = [decode(CheckpointEvent, v) for v in sent(out, "checkpoints")]
    assert [(e.trigger, e.examples_seen) for e in published] == [("config_change", 4)]
    assert pool.lanes["m"].config.triggers.every_n == 2

    # Another factory is another model, not a new setting: the old settings stay.
    other = config(factory={"path": "river.tree.HoeffdingTreeClassifier"})
    assert sent(pool.reconfigure([other]), "checkpoints") == []
    assert pool.lanes["m"].config.factory.path == "river.linear_model.LogisticRegression"


def test_a_manual_request_is_taken_at_the_next_tick(tmp_path: Path, home: int) -> None:
    pool = make_pool(tmp_path)
    pool.assign({home})
    pool.handle(records([encode(example(i)) for i in range(4)], home))
    pool.flush()
    assert sent(pool.tick(), "checkpoints") == []
    pool.request_all("SIGUSR1")
    published = [
        decode(CheckpointEvent, v) for v in sent(pool.tick() + pool.flush(), "checkpoints")
    ]
    assert [(e.trigger, e.examples_seen) for e in published] == [("manual", 4)]


def test_records_past_the_needed_offset_ask_for_a_seek_back(tmp_path: Path, home: int) -> None:
    """A trainer handed only records past the offset it needs would wait for
    that offset for ever: the pool names the partition and offset to seek to."""
    values = [encode(example(i)) for i in range(12)]
    pool = make_pool(tmp_path)
    assert pool.assign([home]) == {home: 0}
    pool.handle(records(values[5:7], home, start=5))
    pool.flush()
    assert pool.take_gaps() == {home: 0}
    assert pool.take_gaps() == {}  # taken
    pool.handle(records(values[6:7], home, start=6) + records(values[:3], home))
    pool.flush()
    assert pool.take_gaps() == {}  # the needed record came after the gap
    assert pool.expected == {home: 3}
