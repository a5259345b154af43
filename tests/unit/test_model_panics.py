"""A BaseException raised by model code (river's Rust parts raise pyo3's
``PanicException``, a BaseException) is contained like any model failure, while
KeyboardInterrupt, SystemExit and asyncio.CancelledError still stop the trainer
(issue 8, item 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest
from river import linear_model

from schemas.codec import decode, encode
from schemas.events import DeadLetter
from services.learning.adapters import Example, RiverAdapter
from services.learning.sink import InMemorySink
from services.learning.synthetic import LocalExample
from services.learning.trainer import OnlineTrainer
from tests.unit.test_trainer_validation import phishing, river_config, run, weights
from tests.unit.test_worker_pool import config, example, make_pool, records, sent


class FakePanic(BaseException):
    """Stands in for pyo3's PanicException: a BaseException, not an Exception."""


class Panicking(linear_model.LogisticRegression):
    """Learns like LogisticRegression but raises ``raises`` on examples marked ``boom``."""

    def __init__(self, raises: type[BaseException] = FakePanic) -> None:
        super().__init__()
        self.raises = raises

    def learn_one(self, x: dict[Hashable, Any], y: bool | str | int, w: float = 1.0) -> None:
        super().learn_one(x, y, w)  # half-learned first, as a panic mid-update would leave it
        if x.get("boom"):
            raise self.raises("model code gave up")


def panicking_trainer(raises: type[BaseException] = FakePanic) -> OnlineTrainer:
    cfg = river_config()
    return OnlineTrainer(cfg, InMemorySink(), adapter=RiverAdapter(cfg, model=Panicking(raises)))


def test_a_panic_in_learn_one_rolls_the_batch_back_and_learns_the_rest() -> None:
    """Guards: the BaseException escaped the rollback (``except Exception``) and the
    half-learned example stayed in the model, then killed the agent."""
    good = phishing(8)
    boom = LocalExample("boom", "m", {**good[0].features, "boom": True}, True)
    trainer = panicking_trainer()
    outcomes = run(trainer, [*good[:2], boom, *good[2:]])
    trained = [o for o in outcomes if o.status == "trained"]
    (failed,) = trained[0].failed
    assert failed.example.example_id == "boom"
    assert "FakePanic" in failed.reason
    assert (trainer.failed, trainer.examples_seen) == (1, 7)
    reference = linear_model.LogisticRegression()
    for ex in good[:7]:
        reference.learn_one(dict(ex.features), bool(ex.label))
    assert weights(trainer) == dict(reference.weights)


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, asyncio.CancelledError])
def test_shutdown_exceptions_from_model_code_still_propagate(stop: type[BaseException]) -> None:
    good = phishing(4)
    boom = LocalExample("boom", "m", {**good[0].features, "boom": True}, True)
    trainer = panicking_trainer(stop)
    with pytest.raises(stop):
        run(trainer, [*good[:3], boom])


class PanickingValidation(RiverAdapter):
    """An adapter whose model code panics outside the batch (in validation)."""

    def __init__(self, raises: type[BaseException]) -> None:
        super().__init__(config())
        self.raises = raises

    def validate(self, example: Example) -> Any:
        if example.features.get("x") == 3.0:
            raise self.raises("panic while reading the example")
        return super().validate(example)


@pytest.mark.parametrize("raises", [FakePanic, KeyboardInterrupt, asyncio.CancelledError])
def test_the_pool_dead_letters_a_panicking_record_and_lets_shutdown_through(
    tmp_path: Path, raises: type[BaseException]
) -> None:
    """Guards: a BaseException from model code escaped ``TrainerPool.handle`` and
    stopped the agent; shutdown exceptions must still do so."""
    from services.learning.pool import partition_of

    home = partition_of("m", 3)
    pool = make_pool(tmp_path)
    pool.assign([home])
    (lane,) = pool.lanes.values()
    assert lane.trainer is not None
    lane.trainer.adapter = PanickingValidation(raises)
    values = [encode(example(i)) for i in range(8)]  # example 3 has x == 3.0
    if raises is FakePanic:
        out = pool.handle(records(values, home))
        (letter,) = [decode(DeadLetter, v) for v in sent(out, "dead_letters")]
        assert (letter.source_offset, letter.error_kind) == (3, "processing")
        assert "panic while reading" in letter.error
        assert pool.expected[home] == 8  # the agent went on past it
    else:
        with pytest.raises(raises):
            pool.handle(records(values, home))
    pool.close()
