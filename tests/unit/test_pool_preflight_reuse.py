"""The first assignment takes the trainer the pre-flight restored instead of loading
the checkpoint again, and only while the store still offers what the pre-flight
chose from; what it trains is what a fresh restore would train.

Driven through :class:`TrainerPool` on a real store, without Kafka: three
checkpoints after 8, 16 and 24 examples (``tests.unit.test_restore_fallback``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.codec import encode
from services.learning.pool import TrainerPool
from services.learning.store_sink import CheckpointerSink
from tests.unit.test_restore_fallback import flip, pool_on, train, version_dir
from tests.unit.test_worker_pool import example, records


@pytest.fixture
def home() -> int:
    from services.learning.pool import partition_of
    from tests.unit.test_worker_pool import PARTS

    return partition_of("m", PARTS)


@pytest.fixture
def store_root(tmp_path: Path, home: int) -> Path:
    root = tmp_path / "store"
    train(root, home, 24)
    return root


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``restore_latest`` of any pool from now on, by model."""
    loads: list[str] = []
    original = CheckpointerSink.restore_latest

    def counted(self: CheckpointerSink, model: str, adapter: Any) -> Any:
        loads.append(model)
        return original(self, model, adapter)

    monkeypatch.setattr(CheckpointerSink, "restore_latest", counted)
    return loads


def state_after(pool: TrainerPool, home: int, start: int, stop: int) -> tuple[Any, ...]:
    pool.handle(records([encode(example(i)) for i in range(start, stop)], home, start))
    (lane,) = pool.lanes.values()
    trainer = lane.trainer
    assert trainer is not None
    probe = {"x": 3.0, "y": 1.0}
    model = trainer.adapter.live_objects()["model"]
    return (trainer.step, trainer.examples_seen, trainer.digest, model.predict_proba_one(probe))


def test_the_first_assignment_takes_the_preflight_trainer_without_loading_again(
    store_root: Path, home: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    pool = pool_on(store_root)
    assert pool.preflight() == {"m": "m-000003"}
    (lane,) = pool.lanes.values()
    assert lane.standby is not None
    preflighted = lane.standby[0]
    assert pool.assign([home]) == {home: 24}
    assert lane.trainer is preflighted
    assert loads == ["m"]  # the pre-flight's only
    assert lane.standby is None
    pool.close()


def test_what_it_trains_equals_what_a_fresh_restore_trains(store_root: Path, home: int) -> None:
    reused = pool_on(store_root)
    reused.preflight()
    reused.assign([home])
    fresh = pool_on(store_root)
    fresh.assign([home])
    assert state_after(reused, home, 24, 40) == state_after(fresh, home, 24, 40)
    reused.close()
    fresh.close()


def test_a_checkpoint_committed_after_the_preflight_is_restored_instead(
    store_root: Path, home: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = pool_on(store_root)
    assert pool.preflight() == {"m": "m-000003"}
    train(store_root, home, 32, start=24)  # another worker trained on meanwhile: m-000004
    loads = count_loads(monkeypatch)
    assert pool.assign([home]) == {home: 32}
    (lane,) = pool.lanes.values()
    assert lane.trainer is not None
    assert lane.trainer.last_version == "m-000004"
    assert loads == ["m"]
    pool.close()


def test_later_assignments_restore_from_the_store(
    store_root: Path, home: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = pool_on(store_root)
    pool.preflight()
    pool.assign([home])
    pool.revoke([home])
    loads = count_loads(monkeypatch)
    assert pool.assign([home]) == {home: 24}
    assert loads == ["m"]
    pool.close()


def test_an_assignment_without_the_model_drops_the_preflight_trainer(
    store_root: Path, home: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = pool_on(store_root)
    pool.preflight()
    other = next(p for p in range(3) if p != home)
    assert pool.assign([other]) == {}
    (lane,) = pool.lanes.values()
    assert lane.standby is None
    assert lane.trainer is None
    loads = count_loads(monkeypatch)
    assert pool.assign([home]) == {home: 24}
    assert loads == ["m"]
    pool.close()


def test_a_file_damaged_after_the_preflight_is_found_by_the_assignment(
    store_root: Path, home: int
) -> None:
    """As a fresh restore would: the damaged newest checkpoint is skipped, loudly."""
    pool = pool_on(store_root)
    assert pool.preflight() == {"m": "m-000003"}
    flip(version_dir(store_root, 3) / "blobs" / "river.pkl")
    assert pool.assign([home]) == {home: 16}
    (lane,) = pool.lanes.values()
    assert lane.trainer is not None
    assert lane.trainer.last_version == "m-000002"
    assert pool.stats.restore_failures == 1
    pool.close()
