"""The joiner never trusts a committed offset past what its table accounts for.

The join table records, per input partition, the next offset the join handled,
written with each record's own state changes (after its outputs). At an
assignment the consumer is sought to the committed offset unless the table
accounts for less: then to the table's offset, so a record committed without
ever being joined (the kill -9 loss of issue 9) is read again; the records the
table already reflects change nothing when read again. A plain dict stands in
for the faust table, a fake aiokafka consumer for the real one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faust
from faust.types import TP

from schemas.codec import decode, encode
from schemas.events import FeedbackEvent, InferenceLog, TrainingExample
from services.attribution import JoinerConfig, join_partition
from services.config import TopicsConfig
from services.deadletters import RawRecord
from streams import kafka_compat
from streams.joiner import JoinerWorker, TablePendingStore, table_floor
from streams.kafka_compat import HighwaterConsumerThread, HighwaterTransport, rewind_target
from tests.unit.joiner_sends import wire

T0 = 1_700_000_000_000


def test_a_committed_offset_past_the_floor_is_rewound_to_it() -> None:
    assert rewind_target(10, 7) == 7


def test_a_floor_at_or_ahead_of_the_committed_offset_changes_nothing() -> None:
    # ahead: state written after the last commit; the replay is known by event_id
    assert rewind_target(10, 10) == 10
    assert rewind_target(10, 12) == 10


def test_no_floor_keeps_the_committed_offset() -> None:
    assert rewind_target(10, None) == 10


class OrderedTable(dict[str, bytes]):
    """A dict that remembers the order of its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def __setitem__(self, key: str, value: bytes) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)


def test_the_table_floor_is_the_handled_offset_written_last_with_the_state() -> None:
    table = OrderedTable()
    store = TablePendingStore(table)
    assert table_floor(store, "in", 0, "inference") == 0  # handled nothing there
    store.put_handled("in", 0, 5)
    store.put_watermark(0, "inference", T0)  # a change the join makes after it
    assert table == {}  # held back like every other change
    assert table_floor(store, "in", 0, "inference") == 5
    store.flush()
    assert table_floor(store, "in", 0, "inference") == 5
    assert table.writes[-1] == "\x00offset:in:0"  # after the state it accounts for
    assert table_floor(store, "in", 1, "inference") == 0


def test_state_from_before_handled_offsets_were_kept_has_no_floor() -> None:
    # A watermark is written with the first record the join handles on an input,
    # so a watermark without an offset is state an earlier version wrote.
    store = TablePendingStore({"\x00watermark:0:feedback": str(T0).encode()})
    assert table_floor(store, "fb", 0, "feedback") is None
    legacy = TablePendingStore({"\x00watermark:0": str(T0).encode()})  # one per partition
    assert table_floor(legacy, "fb", 0, "feedback") is None


def test_a_discarded_record_does_not_move_the_floor() -> None:
    table: dict[str, bytes] = {}
    store = TablePendingStore(table)
    store.put_handled("in", 0, 3)
    store.discard()  # its send failed: it will be handled again
    assert table_floor(store, "in", 0, "inference") == 0


# -- the seek to committed offsets, on the consumer thread ---------------------


class FakeFloor:
    def __init__(self, floors: dict[TP, int]) -> None:
        self.floors = floors
        self.rewinds: list[tuple[TP, int, int]] = []

    def floor(self, tp: TP) -> int | None:
        return self.floors.get(tp)

    def rewound(self, tp: TP, committed: int, floor: int) -> None:
        self.rewinds.append((tp, committed, floor))


class CommittedConsumer:
    """aiokafka's consumer as far as a seek to committed offsets uses it."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self._committed = committed
        self.positions: dict[TP, int] = {}
        self.to_beginning: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self._committed)

    async def committed(self, tp: TP) -> int | None:
        return self._committed[tp]

    def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: TP) -> None:
        self.to_beginning.extend(tps)


def _thread(consumer: CommittedConsumer, floor: FakeFloor | None) -> HighwaterConsumerThread:
    thread = object.__new__(HighwaterConsumerThread)
    thread.seeks = {}
    thread._consumer = consumer  # type: ignore[assignment]
    thread.transport = SimpleNamespace(input_floor=floor)  # type: ignore[assignment]
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic != "changelog")
    conf = SimpleNamespace(consumer_auto_offset_reset="earliest")
    thread.app = SimpleNamespace(topics=topics, conf=conf)  # type: ignore[assignment]
    thread.consumer = SimpleNamespace(dropped_stale=0)  # type: ignore[assignment]
    return thread


async def test_the_seek_to_committed_offsets_stops_at_the_floor_and_reports_it() -> None:
    ahead, behind, unknown, fresh = TP("in", 0), TP("in", 1), TP("in", 2), TP("in", 3)
    consumer = CommittedConsumer({ahead: 10, behind: 10, unknown: 10, fresh: None})
    floor = FakeFloor({ahead: 12, behind: 7, fresh: 4})
    thread = _thread(consumer, floor)
    targets = await thread._seek_to_committed()
    assert consumer.positions == {ahead: 10, behind: 7, unknown: 10}
    assert consumer.to_beginning == [fresh]  # nothing committed: the reset policy
    assert floor.rewinds == [(behind, 10, 7)]
    # faust sets its read and committed offsets from these: the rewound records
    # must not be dropped as already read
    assert targets == {ahead: 10, behind: 7, unknown: 10, fresh: None}
    assert thread.seeks == {ahead: 1, behind: 1, unknown: 1, fresh: 1}


async def test_without_a_floor_the_seek_is_to_the_committed_offsets() -> None:
    consumer = CommittedConsumer({TP("in", 0): 10})
    assert await _thread(consumer, None)._seek_to_committed() == {TP("in", 0): 10}
    assert consumer.positions == {TP("in", 0): 10}


# -- a take-over after a record was committed but never joined -----------------


TOPICS = TopicsConfig(partitions=3)
#: Request ids whose join partition is 0: their records are joined where read.
REQUESTS = [r for r in (f"req-{i}" for i in range(1000)) if join_partition(r, 3) == 0][:3]


def inference(i: int) -> bytes:
    event = InferenceLog.new(
        event_id=f"inf-{i}",
        request_id=REQUESTS[i],
        model="m",
        model_version="v1",
        ts=T0 + i,
        features={"x": float(i)},
        prediction=0.5,
    )
    return encode(event)


def feedback(i: int) -> bytes:
    event = FeedbackEvent.new(
        event_id=f"fb-{i}", request_id=REQUESTS[i], model="m", ts=T0 + 100 + i, label=True
    )
    return encode(event)


def _worker(tmp_path: Path, table: dict[str, bytes]) -> JoinerWorker:
    """A joiner worker on driftloop's transport whose table is ``table`` (a
    dict: no faust event context needed)."""
    app = faust.App("t", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), store="memory://")
    kafka_compat.install(app)
    worker = JoinerWorker(app, TOPICS, JoinerConfig())
    worker.store.table = table  # the same mapping interface as the faust table
    worker.joiner.rebalance([0, 1, 2])
    return worker


def _run(worker: JoinerWorker, record: RawRecord) -> list[str]:
    """What the agent does with one record: handle it, send, write its state.
    Returns the example ids it would send."""
    out = wire(worker.handle(record))
    worker.handled(record)
    examples = [value for kind, _, value, *_ in out if kind == "examples"]
    return [decode(TrainingExample, value).example_id for value in examples]


def test_a_take_over_reads_again_what_was_committed_but_never_joined(tmp_path: Path) -> None:
    table: dict[str, bytes] = {}
    first = _worker(tmp_path / "a", table)
    assert isinstance(first.app.transport, HighwaterTransport)
    assert first.app.transport.input_floor is first  # the consumer asks the worker
    logs, fbs = first.topics.inference_logs, first.topics.feedback
    for i in range(3):
        assert _run(first, RawRecord(logs, 0, i, REQUESTS[i].encode(), inference(i))) == []
    emitted = _run(first, RawRecord(fbs, 0, 0, REQUESTS[0].encode(), feedback(0)))
    assert len(emitted) == 1
    # feedback 1 (offset 1) is never handled, yet the group's offset of
    # feedback[0] is committed at 2 (the loss across kill -9). The next owner
    # restores the table:
    second = _worker(tmp_path / "b", table)
    actives = [TP(logs, 0), TP(fbs, 0), TP(logs, 1), TP(fbs, 1)]
    floors = second.read_floors(actives)
    assert floors == {(logs, 0): 3, (fbs, 0): 1, (logs, 1): 0, (fbs, 1): 0}
    committed = {TP(logs, 0): 3, TP(fbs, 0): 2}
    starts = {tp: rewind_target(offset, second.floor(tp)) for tp, offset in committed.items()}
    assert starts == {TP(logs, 0): 3, TP(fbs, 0): 1}
    second.rewound(TP(fbs, 0), 2, 1)
    assert second.stats.rewinds == 1
    assert second.stats.snapshot()["rewinds"] == 1
    # read again from offset 1: the skipped feedback makes its example
    again = _run(second, RawRecord(fbs, 0, 1, REQUESTS[1].encode(), feedback(1)))
    assert len(again) == 1
    assert again != emitted
    assert second.floor(TP(fbs, 0)) == 2
    # and a record the table already reflects changes nothing when read again
    before = dict(table)
    assert _run(second, RawRecord(fbs, 0, 0, REQUESTS[0].encode(), feedback(0))) == []
    assert {k: v for k, v in table.items() if not k.startswith("\x00")} == {
        k: v for k, v in before.items() if not k.startswith("\x00")
    }


async def test_revocation_forgets_the_floors(tmp_path: Path) -> None:
    worker = _worker(tmp_path, {})
    worker.read_floors([TP(worker.topics.feedback, 0)])
    assert worker.floor(TP(worker.topics.feedback, 0)) == 0
    await worker.on_revoked(worker.app, signal=None)
    assert worker.floor(TP(worker.topics.feedback, 0)) is None
