"""The joiner's table-backed pending store: changes are held back until flush.

The faust agent sends a record's outputs before it flushes that record's
state changes into the changelog-backed table, so that the changelog never
records an example that is not yet on its way to Kafka. A plain dict stands
in for the faust table here (same mapping interface).
"""

from __future__ import annotations

import random

import pytest

from schemas.events import FeedbackEvent, InferenceLog
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    PendingRequest,
    Reject,
    SourceRef,
)
from streams.joiner import TablePendingStore


def entry(rid: str, deadline: int = 10) -> PendingRequest:
    return PendingRequest(request_id=rid, partition=0, deadline=deadline)


def test_changes_reach_the_table_only_at_flush_and_reads_see_them_before() -> None:
    table: dict[str, bytes] = {}
    store = TablePendingStore(table)
    store.put(entry("r1"))
    store.put_watermark(0, "inference", 123)
    assert table == {}
    got = store.get("r1")
    assert got is not None
    assert got.request_id == "r1"
    assert store.get_watermark(0, "inference") == 123
    assert store.get_watermark(0, "feedback") is None
    store.flush()
    assert PendingRequest.from_bytes(table["r1"]) == entry("r1")
    assert store.get_watermark(0, "inference") == 123
    assert len(table) == 2


def test_a_delete_hides_the_entry_at_once_and_removes_it_at_flush() -> None:
    table = {"r1": entry("r1").to_bytes()}
    store = TablePendingStore(table)
    assert store.get("r1") is not None
    store.delete("r1")
    assert store.get("r1") is None
    assert "r1" in table
    store.flush()
    assert table == {}
    store.delete("never-there")
    store.flush()  # deleting a missing key is not an error


def test_the_last_change_to_a_key_wins() -> None:
    table: dict[str, bytes] = {}
    store = TablePendingStore(table)
    store.put(entry("r1", deadline=1))
    store.delete("r1")
    store.put(entry("r1", deadline=2))
    store.flush()
    assert PendingRequest.from_bytes(table["r1"]).deadline == 2


def test_discard_forgets_held_back_changes_and_rereads_the_table() -> None:
    table = {"r1": entry("r1", deadline=1).to_bytes()}
    store = TablePendingStore(table)
    store.put(entry("r1", deadline=2))
    store.put(entry("r2"))
    store.discard()
    store.flush()
    got = store.get("r1")
    assert got is not None
    assert got.deadline == 1
    assert store.get("r2") is None
    assert set(table) == {"r1"}


def test_entries_flush_first_and_skip_watermarks() -> None:
    table: dict[str, bytes] = {}
    store = TablePendingStore(table)
    store.put(entry("r1"))
    store.put(PendingRequest(request_id="r2", partition=1, deadline=5))
    store.put_watermark(0, "feedback", 7)
    assert [e.request_id for e in store.entries(frozenset({0}))] == ["r1"]
    assert set(table) == {"r1", "r2", "\x00watermark:0:feedback"}


def test_a_single_watermark_from_older_state_is_read_as_every_inputs() -> None:
    """Guards the upgrade: state written with one watermark per partition
    (before watermarks were kept per input) must resume both inputs from it,
    not from nothing (which would let replayed old events join again)."""
    table = {"\x00watermark:3": b"5000", "\x00watermark:3:feedback": b"7000"}
    store = TablePendingStore(table)
    assert store.get_watermark(3, "inference") == 5000
    assert store.get_watermark(3, "feedback") == 7000
    assert store.get_watermark(4, "inference") is None
    config = JoinerConfig(window_ms=1_000, grace_ms=100)
    joiner = AttributionJoiner(config, store, clock=lambda: 0)
    joiner.rebalance([3])
    assert joiner.watermarks.get(3, "inference") == 5000
    late = InferenceLog.new(
        request_id="old", model="m", model_version="v1", ts=3000, features={}, prediction=1
    )
    out = joiner.on_inference(late, SourceRef(topic="i", partition=3, offset=0))
    assert [o.kind for o in out if isinstance(o, Reject)] == ["late"]


def _stream(rng: random.Random, requests: int) -> list[InferenceLog | FeedbackEvent]:
    """Inference logs and feedback in a shuffled order, with repeats, for one partition."""
    events: list[tuple[float, InferenceLog | FeedbackEvent]] = []
    for i in range(requests):
        ts = 1_000 * i
        log = InferenceLog.new(
            event_id=f"inf-{i}",
            request_id=f"r{i}",
            model="m",
            model_version="v1",
            ts=ts,
            features={"x": float(i)},
            prediction=0.5,
        )
        events.append((i + rng.uniform(-3, 3), log))
        for k in range(rng.randrange(3)):
            fb = FeedbackEvent.new(
                event_id=f"fb-{i}-{k}", request_id=f"r{i}", model="m", ts=ts + 500 * k, label=k
            )
            events.append((i + rng.uniform(-3, 6), fb))
            if rng.random() < 0.2:
                events.append((i + rng.uniform(0, 8), fb))  # delivered twice
    events.sort(key=lambda pair: pair[0])
    return [event for _, event in events]


def _run(
    joiner: AttributionJoiner, events: list[InferenceLog | FeedbackEvent], flush: object
) -> list[str]:
    out: list[str] = []
    for offset, event in enumerate(events):
        if isinstance(event, InferenceLog):
            outcomes = joiner.on_inference(event, SourceRef(topic="i", partition=0, offset=offset))
        else:
            outcomes = joiner.on_feedback(event, SourceRef(topic="f", partition=0, offset=offset))
        for outcome in outcomes:
            if isinstance(outcome, Emit):
                out.append(f"emit {outcome.example.example_id} {outcome.example.label}")
            elif isinstance(outcome, Reject):
                out.append(f"reject {outcome.kind} {outcome.key!r}")
        if callable(flush):
            flush()
    return out


@pytest.mark.parametrize("policy", ["first", "last", "sum"])
@pytest.mark.parametrize("seed", range(3))
def test_the_joiner_over_the_table_store_joins_as_over_the_in_memory_store(
    policy: str, seed: int
) -> None:
    events = _stream(random.Random(seed), 60)
    config = JoinerConfig(window_ms=5_000, grace_ms=1_000, feedback_policy=policy)
    reference = _run(
        AttributionJoiner(config, InMemoryPendingStore(), clock=lambda: 0), events, None
    )
    table: dict[str, bytes] = {}
    store = TablePendingStore(table)
    joined = _run(AttributionJoiner(config, store, clock=lambda: 0), events, store.flush)
    assert joined == reference
    assert any(line.startswith("emit") for line in reference)


class ChangelogTable(dict[str, bytes]):
    """The parts of a faust table the store uses: its local data (here the
    dict itself) and ``send_changelog(partition, key, value)``, recorded."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.changelog: list[tuple[int | None, str, bytes | None]] = []

    @property
    def data(self) -> dict[str, bytes]:
        return self

    def send_changelog(
        self, partition: int | None, key: str, value: bytes | None, **kwargs: object
    ) -> None:
        self.changelog.append((partition, key, value))


@pytest.mark.parametrize("policy", ["first", "last", "sum"])
@pytest.mark.parametrize("batch", [1, 7, 1_000])
def test_batched_flushes_leave_the_table_as_flushing_every_record(policy: str, batch: int) -> None:
    """The agent writes a batch's state once at its end: the join and the
    table it leaves are those of a flush after every record."""
    events = _stream(random.Random(5), 60)
    config = JoinerConfig(window_ms=5_000, grace_ms=1_000, feedback_policy=policy)
    every: dict[str, bytes] = {}
    each = TablePendingStore(every)
    reference = _run(AttributionJoiner(config, each, clock=lambda: 0), events, each.flush)
    table = ChangelogTable()
    store = TablePendingStore(table)
    store.partition = 0
    handled = 0

    def flush_at_batch_end() -> None:
        nonlocal handled
        handled += 1
        if handled % batch == 0:
            store.flush()

    joined = _run(AttributionJoiner(config, store, clock=lambda: 0), events, flush_at_batch_end)
    store.flush()
    assert joined == reference
    assert dict(table) == every
    keys = [key for _, key, _ in table.changelog]
    if batch == 1_000:  # one batch: each key written once, the ones gone never
        assert len(keys) == len(set(keys)) == len(every)


def test_each_change_goes_to_the_changelog_partition_of_the_record_that_made_it() -> None:
    """A batch spans records of several partitions; a change is written where
    faust would have written it, the partition of the record being handled."""
    table = ChangelogTable({"old": entry("old").to_bytes()})
    store = TablePendingStore(table)
    store.partition = 2
    store.put(PendingRequest(request_id="a", partition=2, deadline=5))
    store.put_watermark(2, "inference", 9)
    store.put_handled("logs", 2, 4)
    store.partition = 0
    store.delete("old")
    store.put(entry("b"))
    store.delete("b")  # put and deleted in the batch: never written
    store.put_handled("logs", 0, 8)
    assert table.changelog == []
    store.flush()
    assert table.changelog == [
        (2, "a", table["a"]),
        (2, "\x00watermark:2:inference", b"9"),
        (0, "old", None),
        (2, "\x00offset:logs:2", b"4"),
        (0, "\x00offset:logs:0", b"8"),
    ]
    assert "old" not in table
    assert "b" not in table
    assert store.held == 0


def test_a_failed_record_forgets_only_its_own_changes_not_the_batchs() -> None:
    """A send failing for one record of a batch: the records before it sent their
    outputs, so their held changes must still reach the table; only the failing
    record's are forgotten (it is read again)."""
    table = ChangelogTable({"r0": entry("r0").to_bytes()})
    store = TablePendingStore(table)
    store.partition = 0
    store.put(entry("r1"))
    store.put_handled("logs", 0, 1)
    store.keep()  # r1's outputs were sent
    store.put(entry("r2"))
    store.delete("r0")
    store.put_handled("logs", 0, 2)
    store.discard()  # r2's send failed
    assert store.get("r2") is None
    assert store.get("r0") is not None
    assert store.get_handled("logs", 0) == 1
    store.flush()
    assert set(table) == {"r0", "r1", "\x00offset:logs:0"}
    assert table["\x00offset:logs:0"] == b"1"
