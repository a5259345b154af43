"""The consumer thread fetches for a stable set of active partitions (streams.kafka_compat).

faust passes its live set of active partitions to the consumer thread and
changes it from the main thread while a fetch runs. aiokafka drains (moves
past) the records of the partitions in the set it sees, and of all partitions
when the set is empty, and faust drops the records of partitions it no longer
sees active. A fake fetcher here empties faust's set while it is being read.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.kafka_compat import HighwaterConsumerThread


class EmptyingFetcher:
    """aiokafka's fetcher as far as ``_fetch_records`` uses it; it records the
    partitions it was asked for, after faust's set was emptied under it."""

    def __init__(self, live: set[TP]) -> None:
        self.live = live
        self.asked: list[set[TP]] = []
        self._closed = False
        self._subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)

    async def fetched_records(
        self, partitions: set[TP], timeout: float = 0, max_records: int | None = None
    ) -> dict[TP, list[Any]]:
        self.live.clear()  # the main thread pauses everything meanwhile
        self.asked.append(set(partitions))
        return {tp: [] for tp in partitions}


def _thread() -> HighwaterConsumerThread:
    thread = object.__new__(HighwaterConsumerThread)
    thread.consumer = SimpleNamespace(flow_active=True)
    thread.seeks = {}
    return thread


async def test_the_fetch_asks_for_the_partitions_active_when_it_started() -> None:
    live = {TP("in", 0), TP("in", 1)}
    fetcher = EmptyingFetcher(live)
    consumer = SimpleNamespace(_fetcher=fetcher, _closed=False)
    records = await _thread()._fetch_records(consumer, live, timeout=0.1)
    assert fetcher.asked == [{TP("in", 0), TP("in", 1)}]
    assert set(records) == {TP("in", 0), TP("in", 1)}


async def test_an_empty_set_fetches_nothing_rather_than_everything() -> None:
    fetcher = EmptyingFetcher(set())
    consumer = SimpleNamespace(_fetcher=fetcher, _closed=False)
    assert await _thread()._fetch_records(consumer, set(), timeout=0.1) == {}
    assert fetcher.asked == []


class SeekingConsumer:
    """aiokafka's consumer as far as a seek uses it: positions per partition."""

    def __init__(self) -> None:
        self.positions: dict[TP, int] = {}

    def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset


async def test_a_batch_carries_the_seek_counts_as_of_its_fetch() -> None:
    """What lets the main thread drop records fetched before a seek of their
    partition: faust would otherwise move its read offset past the records the
    seek asked for, and drop those as already read (a trainer stalled so)."""
    live = {TP("in", 0), TP("in", 1)}
    thread = _thread()
    aio = SeekingConsumer()
    thread._consumer = aio  # type: ignore[assignment]
    await thread.seek_here(TP("in", 0), 5)
    consumer = SimpleNamespace(_fetcher=EmptyingFetcher(set(live)), _closed=False)
    before = await thread._fetch_records(consumer, live, timeout=0.1)
    await thread.seek_here(TP("in", 0), 3)
    assert aio.positions == {TP("in", 0): 3}
    assert before.seeks == {TP("in", 0): 1}  # type: ignore[attr-defined]
    assert thread.seeks == {TP("in", 0): 2}  # so records of `before` on in[0] are stale


class _State:
    def __init__(self, position: int | None) -> None:
        self.has_valid_position = position is not None


def _positioned_thread(position: int | None) -> HighwaterConsumerThread:
    thread = _thread()
    states = {("in", 0): _State(position)}
    assignment = SimpleNamespace(state_value=lambda tp: states.get((tp.topic, tp.partition)))
    subscriptions = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
    thread._consumer = SimpleNamespace(  # type: ignore[assignment]
        _fetcher=SimpleNamespace(_subscriptions=subscriptions)
    )
    return thread


def test_the_livelock_check_skips_a_partition_without_a_position(monkeypatch: Any) -> None:
    """faust's check reads aiokafka's position, which asserts that one exists:
    a partition assigned and not yet sought crashed the worker."""
    checked: list[TP] = []
    parent = HighwaterConsumerThread.__mro__[1]
    monkeypatch.setattr(parent, "verify_event_path", lambda self, now, tp: checked.append(tp))
    _positioned_thread(None).verify_event_path(0.0, TP("in", 0))
    _positioned_thread(None).verify_event_path(0.0, TP("in", 9))  # not in the assignment
    assert checked == []
    _positioned_thread(5).verify_event_path(0.0, TP("in", 0))
    assert checked == [TP("in", 0)]
