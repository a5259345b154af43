"""The consumer thread fetches for a stable set of active partitions (streams.kafka_compat).

faust passes its live set of active partitions to the consumer thread and
changes it from the main thread while a fetch runs. aiokafka drains (moves
past) the records of the partitions in the set it sees, and of all partitions
when the set is empty, and faust drops the records of partitions it no longer
sees active. A fake fetcher here empties faust's set while it is being read.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import kafka_compat
from streams.kafka_compat import HighwaterConsumer, HighwaterConsumerThread


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


# -- handing records to the streams (HighwaterConsumer.wait_first) ----------------------


def _consumer() -> Any:
    """A HighwaterConsumer as far as ``wait_first`` uses it (no app, no thread)."""
    consumer = object.__new__(HighwaterConsumer)
    consumer.suspend_flow = asyncio.Event()
    consumer._stopped = asyncio.Event()
    consumer._crashed = asyncio.Event()
    consumer._loop = asyncio.get_running_loop()
    return consumer


async def test_a_callback_that_does_not_wait_completes_inline_without_tasks() -> None:
    consumer = _consumer()
    flow = consumer.suspend_flow.wait()
    before = len(asyncio.all_tasks())

    async def put() -> str:
        assert len(asyncio.all_tasks()) == before  # nothing was scheduled for it
        return "put"

    coro = put()
    done = await consumer.wait_first(coro, flow)
    assert (done.done, done.results, done.stopped) == ([coro], ["put"], False)
    assert flow.cr_frame is None  # closed: no "never awaited" warning


async def test_a_callback_that_waits_still_completes_and_returns_its_result() -> None:
    """A full stream buffer: the put waits; the rest runs as mode would run it."""
    consumer = _consumer()
    room = asyncio.Event()

    async def put() -> str:
        await room.wait()
        await asyncio.sleep(0)
        return "put after waiting"

    coro = put()
    waiting = asyncio.ensure_future(consumer.wait_first(coro, consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    room.set()
    done = await waiting
    assert done.results == ["put after waiting"]
    assert not done.stopped


async def test_a_waiting_callback_is_interrupted_when_the_flow_is_suspended() -> None:
    """What faust's wait_first is for: a rebalance must not wait for a full buffer."""
    consumer = _consumer()
    cancelled = asyncio.Event()

    async def put() -> None:
        try:
            await asyncio.Event().wait()  # never room
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flow = consumer.suspend_flow.wait()
    waiting = asyncio.ensure_future(consumer.wait_first(put(), flow))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    done = await waiting
    assert (done.done, done.results, done.stopped) == ([flow], [True], False)
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_a_callback_error_propagates_from_the_fast_path() -> None:
    consumer = _consumer()

    async def put() -> None:
        raise ValueError("bad record")

    flow = consumer.suspend_flow.wait()
    with pytest.raises(ValueError, match="bad record"):
        await consumer.wait_first(put(), flow)
    assert flow.cr_frame is None


async def test_with_the_flow_suspended_the_general_path_decides() -> None:
    consumer = _consumer()
    consumer.suspend_flow.set()
    ran: list[str] = []

    async def put() -> None:
        await asyncio.sleep(0.05)
        ran.append("put")

    flow = consumer.suspend_flow.wait()
    done = await consumer.wait_first(put(), flow)
    assert ran == []  # the suspension won; the put was cancelled
    assert done.done == [flow]


async def test_while_a_stream_buffer_is_full_the_fetch_waits_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faust re-reads which partitions it may fetch only when its fetch returns:
    with its 1 s timeout, a partition whose buffer drained waited for the idle
    partitions' fetch to time out (the trainer stalled ~0.6 s per large fetch)."""
    asked: list[float] = []

    async def faust_wait(self: Any, timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        asked.append(timeout)
        return {}, set()

    monkeypatch.setattr(faust_aiokafka.Consumer, "_wait_next_records", faust_wait)
    consumer = _consumer()
    consumer._buffered_partitions = set()
    consumer._active_partitions = {TP("in", 0)}
    await consumer._wait_next_records(1.0)
    consumer._buffered_partitions = {TP("in", 1)}
    await consumer._wait_next_records(1.0)
    assert asked == [1.0, kafka_compat.BUFFERED_FETCH_WAIT_S]


async def test_with_every_buffer_full_the_fetcher_wakes_when_one_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faust sleeps a whole second when no partition may be fetched."""
    calls: list[float] = []

    async def faust_wait(self: Any, timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        calls.append(timeout)
        return {}, set()

    monkeypatch.setattr(faust_aiokafka.Consumer, "_wait_next_records", faust_wait)
    monkeypatch.setattr(faust_aiokafka.Consumer, "flow_active", True)
    monkeypatch.setattr(kafka_compat, "DRAIN_WAIT_S", 600.0)
    consumer = _consumer()
    consumer._buffered_partitions = {TP("in", 0)}
    consumer._active_partitions = set()
    waiting = asyncio.ensure_future(consumer._wait_next_records(1.0))
    await asyncio.sleep(0.01)
    assert calls == []  # waiting for a buffer to drain
    consumer._buffered_partitions.discard(TP("in", 0))
    consumer._active_partitions.add(TP("in", 0))
    consumer._buffer_drained.set()  # what on_buffer_drop does after faust's own work
    await waiting
    assert calls == [kafka_compat.BUFFERED_FETCH_WAIT_S]
