"""Checkpoints off the training path (issue 12, item 3).

The trainer pays only for the snapshot; a checkpoint is reported (and its
CheckpointEvent queued) only once committed, in checkpoint order; a failed
commit is logged, counted and covered by the next checkpoint; count and
interval checkpoints are coalesced when the sink has no room, the other
triggers wait; shutdown waits for pending commits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import decode, encode
from schemas.events import CheckpointEvent
from schemas.manifest import CheckpointManifest, ManifestDraft
from services.checkpoints.config import StoreConfig
from services.checkpoints.storage import Payload
from services.checkpoints.store import CheckpointStore
from services.learning.config import ModelConfig, parse_config
from services.learning.pool import TrainerPool, partition_of
from services.learning.sink import InMemorySink, TrainerSnapshot
from services.learning.trainer import COALESCIBLE, CheckpointRecord, OnlineTrainer
from tests.unit.test_worker_pool import example, records, sent

TOPIC = "training-examples"


def river(**overrides: Any) -> ModelConfig:
    data: dict[str, Any] = {
        "name": "m",
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "batch_size": 4,
        "triggers": {"every_n": 8},
        "promotion": {"holdout_percent": 0},  # these tests count checkpoints by examples
    }
    data.update(overrides)
    return parse_config({"model": [data]}).model("m")


def feed(trainer: OnlineTrainer, start: int, stop: int) -> list[CheckpointRecord]:
    out: list[CheckpointRecord] = []
    for i in range(start, stop):
        outcome = trainer.process(example(i), topic=TOPIC, partition=0, offset=i)
        out += outcome.checkpoints
    return out


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (generous: the machine is busy); fail naming ``what``."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


class Blocked:
    """Runs ``call`` on a thread; ``result`` once it returned."""

    def __init__(self, call: Callable[[], list[CheckpointRecord]]) -> None:
        self.result: list[CheckpointRecord] | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], list[CheckpointRecord]]) -> None:
        self.result = call()

    def join(self) -> list[CheckpointRecord]:
        self.thread.join(timeout=60)
        assert self.result is not None
        return self.result


# -- reported after commit, in order -------------------------------------------------------


def test_a_checkpoint_is_reported_only_once_committed() -> None:
    sink = InMemorySink(hold=True)
    trainer = OnlineTrainer(river(), sink)
    assert feed(trainer, 0, 8) == []  # count checkpoint at 8 submitted, not committed
    assert sink.pending == 1
    assert trainer.last_version is None
    sink.release()
    [record] = trainer.tick()
    assert (record.version, record.trigger, record.examples_seen) == ("m-000001", "count", 8)
    assert trainer.last_version == "m-000001"
    assert trainer.tick() == []  # reported once


class GatedStore(CheckpointStore):
    """A real store whose commits wait for ``gate`` and can be told to fail."""

    def __init__(self, root: Path) -> None:
        super().__init__(StoreConfig(root=root, fsync=False, keep_latest=100))
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.waiting = 0

    def commit(
        self, model: str, files: Mapping[str, Payload], draft: ManifestDraft, **kw: Any
    ) -> CheckpointManifest:
        self.waiting += 1
        assert self.gate.wait(timeout=60)
        self.waiting -= 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return super().commit(model, files, draft, **kw)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[TrainerPool, GatedStore, int]]:
    store = GatedStore(tmp_path / "store")
    pool = TrainerPool([river()], store, topic=TOPIC, partitions=3)
    home = partition_of("m", 3)
    pool.assign([home])
    yield pool, store, home
    store.gate.set()
    pool.close()


def test_events_follow_their_commits_in_checkpoint_order(
    gated: tuple[TrainerPool, GatedStore, int],
) -> None:
    pool, store, home = gated
    store.gate.clear()
    out = pool.handle(records([encode(example(i)) for i in range(24)], home))
    assert sent(out, "checkpoints") == []  # three saves queued, none committed
    assert store.manifests("m") == []
    assert pool.describe()["models"]["m"]["commits_pending"] == 3  # small: none coalesced
    store.gate.set()
    events = [decode(CheckpointEvent, v) for v in sent(pool.flush(), "checkpoints")]
    assert [e.examples_seen for e in events] == [8, 16, 24]
    assert [e.version for e in events] == [m.version for m in store.manifests("m")]
    for event in events:
        assert (Path(event.location) / "manifest.json").is_file()


# -- a failed commit ------------------------------------------------------------------------


def test_a_failed_commit_is_logged_counted_and_retried_covering_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = InMemorySink(hold=True)
    trainer = OnlineTrainer(river(triggers={"every_n": 8}), sink)
    feed(trainer, 0, 8)  # count checkpoint at 8, held
    feed(trainer, 8, 12)  # trained on: 12 examples now
    with caplog.at_level(logging.ERROR):
        sink.release(OSError("disk full"))
        assert trainer.tick() == []  # the failure is seen; the retry is submitted
    assert trainer.checkpoint_failures == 1
    assert any(
        r.levelno == logging.ERROR and "failed to commit" in r.getMessage() for r in caplog.records
    )
    assert sink.pending == 1  # the retry
    sink.release()
    [record] = trainer.tick()
    assert record.trigger == "count"
    assert record.reason.startswith("retry after a failed commit")
    assert record.examples_seen == 12  # everything the failed one had, and more
    assert sink.snapshots[-1].offsets == {TOPIC: {"0": 12}}
    assert trainer.tick() == []  # no further retry once one committed


def test_a_commit_failing_in_the_store_is_covered_by_a_checkpoint_on_the_last_committed(
    gated: tuple[TrainerPool, GatedStore, int],
) -> None:
    pool, store, home = gated
    pool.handle(records([encode(example(i)) for i in range(8)], home))
    pool.flush()
    [first] = store.manifests("m")
    store.fail_next = True
    pool.handle(records([encode(example(i)) for i in range(8, 16)], home, 8))
    pool.flush()  # the commit at 16 failed
    assert [m.examples_seen for m in store.manifests("m")] == [8]
    assert pool.describe()["models"]["m"]["checkpoint_failures"] == 1
    events = [decode(CheckpointEvent, v) for v in sent(pool.tick() + pool.flush(), "checkpoints")]
    assert [(e.trigger, e.examples_seen) for e in events] == [("count", 16)]
    retry = store.manifests("m")[-1]
    assert retry.parent_version == first.version  # built on what is committed, not the failure


# -- back-pressure --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trigger", ["count", "interval", "drift", "metric", "manual", "config_change", "shutdown"]
)
def test_only_count_and_interval_checkpoints_may_be_declined(trigger: str) -> None:
    calls: list[bool] = []

    class Recording(InMemorySink):
        def submit(
            self, snapshot: TrainerSnapshot, *, block: bool = True
        ) -> Any:  # the Future[Committed] | None of the protocol
            calls.append(block)
            return super().submit(snapshot, block=block)

    trainer = OnlineTrainer(river(), Recording())
    feed(trainer, 0, 4)
    trainer._take(trigger, "test")
    assert calls == [trigger not in {"count", "interval"}]
    assert {"count", "interval"} == COALESCIBLE


def test_a_count_checkpoint_due_while_one_is_pending_is_coalesced_into_the_next() -> None:
    sink = InMemorySink(hold=True)
    trainer = OnlineTrainer(river(), sink)
    feed(trainer, 0, 8)  # submitted, held
    feed(trainer, 8, 16)  # due at 16 while 8 is pending: training does not wait
    assert (trainer.coalesced, sink.pending, trainer.examples_seen) == (1, 1, 16)
    sink.release()
    records = feed(trainer, 16, 24)  # the next count checkpoint, at 24, is written
    sink.release()
    records += trainer.tick()
    assert [(r.examples_seen, r.coalesced) for r in records] == [(8, 0), (24, 1)]
    assert [s.examples_seen for s in sink.snapshots] == [8, 24]
    assert sink.snapshots[-1].extra["coalesced"] == 1


def test_an_interval_checkpoint_due_while_one_is_pending_is_coalesced() -> None:
    now = [0]
    sink = InMemorySink(hold=True)
    config = river(triggers={"every_n": None, "interval_s": 1.0})
    trainer = OnlineTrainer(config, sink, clock=lambda: now[0])
    feed(trainer, 0, 4)
    now[0] = 1000
    trainer.tick()  # interval checkpoint submitted, held
    feed(trainer, 4, 8)
    now[0] = 2000
    assert trainer.tick() == []
    assert (trainer.coalesced, sink.pending) == (1, 1)


def test_a_manual_checkpoint_waits_for_room_instead_of_being_coalesced() -> None:
    sink = InMemorySink(hold=True)
    trainer = OnlineTrainer(river(triggers={"every_n": 1000}), sink)
    feed(trainer, 0, 8)
    trainer.request_checkpoint("operator")
    assert trainer.tick() == []  # submitted, held
    assert sink.pending == 1
    trainer.request_checkpoint("again")
    second = Blocked(trainer.tick)
    until(lambda: sink.waiting == 1, "the second manual checkpoint waits for room")
    assert second.thread.is_alive()
    sink.release()
    reported = second.join()
    assert trainer.coalesced == 0
    sink.release()
    reported += trainer.tick()
    assert [r.reason for r in reported] == ["operator", "again"]


# -- shutdown -------------------------------------------------------------------------------


def test_shutdown_waits_for_pending_commits_then_takes_its_own() -> None:
    sink = InMemorySink(hold=True)
    trainer = OnlineTrainer(river(triggers={"every_n": 8}), sink)
    feed(trainer, 0, 8)  # pending
    feed(trainer, 8, 12)  # unsaved progress
    stop = threading.Event()

    def releaser() -> None:  # the store, committing whatever is pending
        while not stop.is_set():
            if sink.pending:
                sink.release()
            time.sleep(0.005)

    helper = threading.Thread(target=releaser, daemon=True)
    helper.start()
    try:
        records = trainer.shutdown()
    finally:
        stop.set()
        helper.join(timeout=10)
    assert [(r.trigger, r.examples_seen) for r in records] == [("count", 8), ("shutdown", 12)]
    assert trainer.commits_pending == 0
    assert sink.triggers() == ["count", "shutdown"]


def test_pool_shutdown_publishes_pending_commits_and_the_shutdown_checkpoint(
    gated: tuple[TrainerPool, GatedStore, int],
) -> None:
    pool, store, home = gated
    store.gate.clear()
    out = pool.handle(records([encode(example(i)) for i in range(12)], home))  # count at 8
    done: list[Any] = []
    stopping = threading.Thread(target=lambda: done.append(pool.shutdown()), daemon=True)
    stopping.start()
    until(lambda: store.waiting == 1, "the commit at 8 is held in the store")
    assert stopping.is_alive()
    assert done == []
    store.gate.set()
    stopping.join(timeout=60)
    events = [decode(CheckpointEvent, v) for v in sent(out + done[0], "checkpoints")]
    assert [(e.trigger, e.examples_seen) for e in events] == [("count", 8), ("shutdown", 12)]
    assert [m.trigger for m in store.manifests("m")] == ["count", "shutdown"]


class CommitsWhenWaitedFor(InMemorySink):
    """Holds each commit until the trainer waits for it, then fails the first one."""

    def __init__(self) -> None:
        super().__init__(hold=True)
        self.errors: list[BaseException | None] = [OSError("disk full")]

    def submit(self, snapshot: TrainerSnapshot, *, block: bool = True) -> Any:
        future = super().submit(snapshot, block=block)
        assert future is not None
        sink, error = self, (self.errors.pop() if self.errors else None)

        class Waited:
            def done(self) -> bool:
                return future.done()

            def exception(self, timeout: float | None = None) -> BaseException | None:
                if not future.done():
                    sink.release(error)
                return future.exception(timeout)

            def result(self, timeout: float | None = None) -> Any:
                return future.result(timeout)

        return Waited()


def test_shutdown_covers_a_pending_commit_that_fails_while_it_waits() -> None:
    sink = CommitsWhenWaitedFor()
    trainer = OnlineTrainer(river(triggers={"every_n": 8}), sink)
    feed(trainer, 0, 8)  # pending; nothing trained after it
    records = trainer.shutdown()  # the pending commit fails while shutdown waits for it
    assert trainer.checkpoint_failures == 1
    assert [(r.trigger, r.examples_seen) for r in records] == [("shutdown", 8)]
    assert sink.snapshots[-1].offsets == {TOPIC: {"0": 8}}
