"""The joiner's table-backed pending store: changes are held back until flush.

The faust agent sends a record's outputs before it flushes that record's
state changes into the changelog-backed table, so that the changelog never
records an example that is not yet on its way to Kafka. A plain dict stands
in for the faust table here (same mapping interface).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import pytest

from schemas.codec import encode
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


# -- batches: the agent holds each record's changes and flushes once a batch ---


class WriteLog(dict[str, bytes]):
    """A dict that logs its writes (key, value or None for a delete) and the
    partition :class:`TablePendingStore` placed them on."""

    def __init__(self) -> None:
        super().__init__()
        self.partition: int | None = None
        self.log: list[tuple[int | None, str, bytes | None]] = []

    def __setitem__(self, key: str, value: bytes) -> None:
        self.log.append((self.partition, key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.log.append((self.partition, key, None))
        super().__delitem__(key)

    @contextlib.contextmanager
    def place(self, partition: int) -> Iterator[None]:
        self.partition = partition
        try:
            yield
        finally:
            self.partition = None


def test_a_batch_writes_each_key_once_on_its_partition_entries_then_watermarks_then_offsets() -> (
    None
):
    table = WriteLog()
    store = TablePendingStore(table, place=table.place)
    store.put(entry("r1", deadline=1))  # a record of partition 0
    store.put_watermark(0, "inference", 10)
    store.put_handled("in", 0, 1)
    store.hold(0)
    store.put(PendingRequest(request_id="r2", partition=1, deadline=5))  # one of partition 1
    store.put_handled("in", 1, 1)
    store.hold(1)
    store.put(entry("r1", deadline=2))  # partition 0 again: the same keys change
    store.put_watermark(0, "inference", 20)
    store.put(entry("r3"))
    store.delete("r3")
    store.put_handled("in", 0, 2)
    store.hold(0)
    assert table == {}
    got = store.get("r1")
    assert got is not None
    assert got.deadline == 2
    assert store.get("r3") is None
    assert store.get_watermark(0, "inference") == 20
    assert store.get_handled("in", 0) == 2
    store.flush()
    assert [(p, k) for p, k, _ in table.log] == [
        (1, "r2"),
        (1, "\x00offset:in:1"),
        (0, "r1"),  # r3, created and deleted in the batch, is never written
        (0, "\x00watermark:0:inference"),
        (0, "\x00offset:in:0"),
    ]
    assert PendingRequest.from_bytes(table["r1"]).deadline == 2
    assert table["\x00watermark:0:inference"] == b"20"
    assert table["\x00offset:in:0"] == b"2"
    store.flush()  # nothing held: nothing written again
    assert len(table.log) == 5


Record = tuple[str, int, InferenceLog | FeedbackEvent]


def _records(events: list[InferenceLog | FeedbackEvent]) -> list[Record]:
    """(topic, offset, event) in read order: each topic's offsets count up."""
    offsets = {"i": 0, "f": 0}
    out: list[Record] = []
    for event in events:
        topic = "i" if isinstance(event, InferenceLog) else "f"
        out.append((topic, offsets[topic], event))
        offsets[topic] += 1
    return out


def _join(joiner: AttributionJoiner, store: TablePendingStore, record: Record) -> list[str]:
    """What the agent does with one record: join it, then hold its changes with
    its partition's next offset. Returns its outputs as text (examples as bytes)."""
    topic, offset, event = record
    source = SourceRef(topic=topic, partition=0, offset=offset)
    if isinstance(event, InferenceLog):
        outcomes = joiner.on_inference(event, source)
    else:
        outcomes = joiner.on_feedback(event, source)
    out = []
    for outcome in outcomes:
        if isinstance(outcome, Emit):
            out.append(f"emit {encode(outcome.example).decode()}")
        elif isinstance(outcome, Reject):
            out.append(f"reject {outcome.kind} {outcome.key!r}")
    known = store.get_handled(topic, 0)
    store.put_handled(topic, 0, max(offset + 1, known or 0))
    store.hold(0)
    return out


def _batched(
    config: JoinerConfig, table: WriteLog, records: list[Record], batch: int
) -> tuple[list[list[str]], list[int]]:
    """Join ``records`` over ``table`` as a (restarted) worker does: from the
    offsets the table accounts for, ``batch`` records at a time, flushing after
    each. Returns each batch's outputs and the table's write count after each."""
    store = TablePendingStore(table, place=table.place)
    joiner = AttributionJoiner(config, store, clock=lambda: 0)
    joiner.rebalance([0])
    floors = {topic: store.get_handled(topic, 0) or 0 for topic in ("i", "f")}
    todo = [record for record in records if record[1] >= floors[record[0]]]
    outputs: list[list[str]] = []
    writes: list[int] = []
    for start in range(0, len(todo), batch):
        out: list[str] = []
        for record in todo[start : start + batch]:
            out.extend(_join(joiner, store, record))
        store.flush()
        outputs.append(out)
        writes.append(len(table.log))
    return outputs, writes


@pytest.mark.parametrize("policy", ["first", "last", "sum"])
@pytest.mark.parametrize("seed", range(3))
def test_batches_join_and_store_as_records_one_by_one(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    records = _records(_stream(rng, 60))
    config = JoinerConfig(window_ms=5_000, grace_ms=1_000, feedback_policy=policy)
    results = []
    for batch in (1, rng.randint(2, 9), 1_000):
        table = WriteLog()
        outputs, _ = _batched(config, table, records, batch)
        results.append(([line for out in outputs for line in out], dict(table)))
    assert results[0] == results[1] == results[2]
    assert any(line.startswith("emit") for line in results[0][0])


@pytest.mark.parametrize("policy", ["first", "last"])
@pytest.mark.parametrize("seed", range(2))
def test_a_kill_at_any_write_of_a_batch_loses_no_example_and_changes_none(
    policy: str, seed: int
) -> None:
    """A worker dies after a batch's outputs went out and some prefix of its
    table writes landed; the next one restores that table and reads each input
    again from the offset the table accounts for. Every example either made is
    one of the uninterrupted run's, byte for byte, and none is missing."""
    rng = random.Random(seed)
    records = _records(_stream(rng, 40))
    config = JoinerConfig(window_ms=5_000, grace_ms=1_000, feedback_policy=policy)
    batch = rng.randint(5, 15)
    clean = WriteLog()
    outputs, writes = _batched(config, clean, records, batch)
    reference = {line for out in outputs for line in out if line.startswith("emit")}
    assert reference
    for killed, end in enumerate(writes):
        sent = {line for out in outputs[: killed + 1] for line in out if line.startswith("emit")}
        begin = writes[killed - 1] if killed else 0
        for cut in range(begin, end + 1):
            durable = WriteLog()
            for _, key, value in clean.log[:cut]:
                if value is None:
                    dict.pop(durable, key, None)
                else:
                    dict.__setitem__(durable, key, value)
            again, _ = _batched(config, durable, records, rng.randint(1, 15))
            made = sent | {line for out in again for line in out if line.startswith("emit")}
            assert made == reference, (killed, cut)
