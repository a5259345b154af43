"""faust's Kafka transport: table recovery that works on Tansu, no skipped input.

faust decides that a changelog partition is recovered when it has read up to
the partition's *end offset*, which it asks for with ``ListOffsets(latest)``
(aiokafka ``end_offsets``). Tansu 0.6 answers that with the base offset of
the partition's last record batch + 1, not the high watermark, so whenever the
last changelog batch holds more than one record faust stops recovering after
its first record: the rest of the batch is never applied to the table, and a
worker that takes over a partition silently loses pending state.

The high watermark in Fetch responses is right on Tansu. This transport
corrects faust's highwaters with it: for every partition it sends one Fetch
(at most one byte) from the reported end offset's last record and takes
``max(end_offsets, fetch high watermark)``. On Apache Kafka both agree,
so there it costs one small request per rebalance and changes nothing. When
the Fetch fails for a partition the reported end offset is kept (the
behaviour of plain faust), and a warning is logged.

A second correction, for any broker: faust fetches input partitions while it
recovers tables and may drop records it fetched (a rebalance or a flow stop
in the middle of a ``getmany``); it relies on its "seek to committed
offsets" at the end of every rebalance to read them again. aiokafka's
``seek_to_committed`` only seeks partitions whose committed offset is above
0, so a partition with nothing committed yet (or committed at 0) stayed
where the dropped fetch had left it, and its first records were never
processed. Measured with the joiner: restarted workers began in the middle of
the input and attributed a later feedback instead of the first, or sat idle
at the end of a topic they had never processed. Here those partitions are
rewound the way the consumer would start on them: ``consumer_auto_offset_reset``
(or to 0 where 0 was committed). Table changelogs are left alone: faust
positions them itself.

The drops themselves come from a race: faust hands its live set of active
partitions to the consumer thread, and while aiokafka drains the partitions
in that set (all of them when it is momentarily empty) the main thread pauses
and resumes partitions; faust then skips records of partitions it does not
see active any more. Seen right after a rebalance's seek, when no seek
follows: one record (the first after the committed offset) was skipped. The
consumer thread now fetches for a snapshot of the set, and for none when it
is empty.

Seeks, for any broker. faust calls aiokafka's ``seek`` on the event loop's
thread while the consumer thread fetches: the two race on the fetcher's
buffers (measured: a restarted ``--role all`` worker died with a
``KeyError`` in aiokafka's ``fetched_records`` right after the trainer's
seek). Here every seek runs on the consumer thread. And records the consumer
thread handed out *before* a seek of their partition may still reach faust
after it (a ``getmany`` that began before a rebalance returns once the
rebalance's seeks are done). faust then moves its read offset past them and
drops, as already read, the records the seek asked for: measured, a
restarted trainer sought ``training-examples`` back to its checkpoint's
offset and was handed only later records, for ever (it waits for the
offset it sought). So the consumer thread counts the seeks of each
partition, every batch carries the counts as of its fetch, and records of a
partition sought since their fetch are dropped before faust sees them,
as aiokafka drops the records it buffered for a partition when it is
sought. faust's seek to committed offsets (and the rewind above) counts too,
for the joiner's inputs.

A floor under the seek to committed offsets: an app whose state records how
far it handled each input partition registers an :class:`InputFloor`
(:func:`set_input_floor`; the joiner does), and no input partition is sought
past it: a committed offset beyond it (records committed but never handled)
is sought back to it and reported.

Throughput, for any broker. faust hands each fetched record to its streams
with a ``wait_first`` of four tasks; :meth:`HighwaterConsumer.wait_first`
runs the hand-over inline when it does not have to wait (the same outcome,
without the tasks). And three waits stalled a busy partition: faust's Fetch
wait of 1500 ms on idle partitions of the same broker
(:data:`CONSUMER_FETCH_MAX_WAIT_MS`), its 1 s fetch timeout and 1 s sleep
while stream buffers are full (:meth:`HighwaterConsumer._wait_next_records`).
Measured on a timeline of the trainer's fetches and chunks
(``benchmarks.train``): before, after each large fetch the model thread sat
idle for 0.3 to 1.8 s (the likely cause of runs at ~3,000 or ~8,000
examples/s); after, such idle gaps became rare and short.

:func:`install` puts the transport on a faust app; :func:`streams.app.make_app`
does that for every ``kafka://`` app.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping
from typing import Any, Protocol, cast

import faust
from aiokafka import errors as aiokafka_errors
from aiokafka import structs as aiokafka_structs
from aiokafka.protocol.fetch import FetchRequest
from faust.tables import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.services import WaitResults
from mode.utils.locks import Event

log = logging.getLogger(__name__)

#: How long the broker may hold the Fetch: it answers at once when the
#: partition has a record at the fetch offset. Not 0: Tansu answers a Fetch
#: with ``max_wait_ms=0`` with no partitions at all.
_FETCH_MAX_WAIT_MS = 100

#: How long the broker may hold a consumer's Fetch when no fetched partition has
#: a record (faust hard-codes 1500 ms). aiokafka sends one Fetch per broker at a
#: time, and while the records of one partition wait to be consumed it fetches
#: the *other* partitions of that broker: when those are idle (most partitions
#: of ``training-examples``, keyed by model, are) that Fetch is held for the
#: whole wait, and the busy partition gets no new records until it returns.
#: With 1500 ms the trainer alternated between streaming and stalling (runs of
#: the same benchmark gave ~3,000 or ~8,000 examples/s). An idle consumer sends
#: a few more requests per second.
CONSUMER_FETCH_MAX_WAIT_MS = 50

#: How long faust's fetch of records waits while a stream buffer is full
#: (:meth:`HighwaterConsumer._wait_next_records`); faust waits 1 s.
BUFFERED_FETCH_WAIT_S = 0.02

#: The longest the fetcher waits for a full stream buffer to drain (faust's sleep).
DRAIN_WAIT_S = 1.0

#: Broker URL schemes served by faust's aiokafka driver.
KAFKA_SCHEMES = frozenset({"kafka", "aiokafka"})


async def fetch_high_watermarks(consumer: Any, ends: Mapping[TP, int]) -> dict[TP, int]:
    """High watermarks of ``ends``' partitions, read from Fetch responses.

    Parameters
    ----------
    consumer
        A started ``aiokafka.AIOKafkaConsumer``; its client (and so its
        connections and security settings) sends the requests.
    ends
        The end offset ``ListOffsets`` reported per partition; each Fetch
        starts one record before it (inside the last batch on Tansu, at the
        last record on Kafka), so the broker has something to answer with.

    Returns
    -------
    dict
        Partition -> high watermark, for the partitions whose Fetch succeeded.
    """
    client = consumer._client  # the consumer's own client: same brokers, auth, TLS
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for tp, end in ends.items():
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            continue
        by_leader[leader][tp.topic].append((tp.partition, max(end - 1, 0), 1))
    found: dict[TP, int] = {}
    for leader, topics in by_leader.items():
        request = FetchRequest(_FETCH_MAX_WAIT_MS, 1, 1, 0, list(topics.items()))
        try:
            response = await client.send(leader, request)
        except aiokafka_errors.KafkaError as exc:
            log.warning("high watermark fetch from node %s failed: %r", leader, exc)
            continue
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *_ in partitions:
                if error_code == 0 and highwater >= 0:
                    found[TP(topic, partition)] = highwater
                else:
                    log.warning(
                        "high watermark fetch for %s[%d]: error code %d",
                        topic,
                        partition,
                        error_code,
                    )
    return found


class InputFloor(Protocol):
    """The offsets up to which an app's own state accounts for its input.

    An app whose state records, per input partition, the next offset it
    handled (the joiner's table) registers one with :func:`set_input_floor`.
    On every seek to committed offsets the consumer thread asks :meth:`floor`
    for each assigned partition and, where the committed offset is beyond it,
    seeks to the floor instead (:func:`rewind_target`) and reports the rewind
    to :meth:`rewound`. Both are called on the consumer thread: they must
    only read (and count) plain values.
    """

    def floor(self, tp: TP) -> int | None:
        """The next offset of ``tp`` the app's state accounts for (None: unknown)."""
        ...

    def rewound(self, tp: TP, committed: int, floor: int) -> None:
        """``tp`` was sought to ``floor``, back from its ``committed`` offset."""
        ...


def rewind_target(committed: int, floor: int | None) -> int:
    """Where a partition committed at ``committed`` is sought when the app's
    state accounts for it up to ``floor``: never past the floor, so records
    committed but never handled are read again; a floor ahead of the committed
    offset (state written after the last commit) changes nothing, the
    replayed records are known to the state."""
    if floor is None or floor >= committed:
        return committed
    return max(floor, 0)


def set_input_floor(app: faust.App, floor: InputFloor | None) -> None:
    """Make ``floor`` bound every seek to committed offsets of ``app``'s consumer
    (see :class:`InputFloor`). A no-op for apps not on :class:`HighwaterTransport`."""
    transport = app.transport
    if isinstance(transport, HighwaterTransport):
        transport.input_floor = floor


class SoughtRecords(dict[TP, list[Any]]):
    """A fetched batch and the seek counts of its partitions as of its fetch."""

    def __init__(self, records: Mapping[TP, list[Any]], seeks: Mapping[TP, int]) -> None:
        super().__init__(records)
        self.seeks = seeks


class HighwaterConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread whose highwaters are never below the fetch
    high watermark, whose seek to committed offsets also rewinds input
    partitions with nothing committed, and which fetches for a stable set of
    active partitions, runs every seek and counts them (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Seeks per partition so far (written on this thread only).
        self.seeks: dict[TP, int] = {}

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by the consumer's start(), when it builds its fetcher.
        consumer._fetch_max_wait_ms = CONSUMER_FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = dict(await super()._highwaters(partitions))
        if self.consumer.in_transaction:  # last stable offsets: not affected
            return reported
        starts = {tp: end for tp, end in reported.items() if end is not None}
        fetched = await fetch_high_watermarks(self._ensure_consumer(), starts)
        corrected = {tp: max(end, fetched.get(tp, end)) for tp, end in starts.items()}
        for tp, highwater in corrected.items():
            if highwater != reported[tp]:
                log.info(
                    "end offset of %s[%d] is %d, not %d as ListOffsets said",
                    tp.topic,
                    tp.partition,
                    highwater,
                    reported[tp],
                )
        return reported | corrected

    def _sought(self, tp: TP) -> None:
        """Count a seek of ``tp`` (on this thread, where batches are drained)."""
        self.seeks[tp] = self.seeks.get(tp, 0) + 1

    def seek(self, partition: TP, offset: int) -> None:
        """Seek ``partition``; run on this thread (:meth:`HighwaterConsumer._seek`)."""
        self._sought(partition)
        super().seek(partition, offset)

    async def seek_here(self, partition: TP, offset: int) -> None:
        """:meth:`seek`, as a coroutine for ``call_thread``."""
        self.seek(partition, offset)

    async def _seek_wait(self, consumer: Any, partitions: Mapping[TP, int]) -> None:
        for tp in partitions:
            self._sought(tp)
        await super()._seek_wait(consumer, partitions)

    async def seek_to_beginning(self, *partitions: Any) -> None:
        await self.call_thread(self._seek_to_beginning, *partitions)

    async def _seek_to_beginning(self, *partitions: Any) -> None:
        consumer = self._ensure_consumer()
        for tp in partitions or consumer.assignment():
            self._sought(tp)
        await consumer.seek_to_beginning(*partitions)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return cast(Mapping[TP, int], await self.call_thread(self._seek_to_committed))

    async def _seek_to_committed(self) -> dict[TP, int | None]:
        """aiokafka's ``seek_to_committed`` plus :meth:`_rewind_uncommitted`, with
        every position changed at once after the committed offsets are read
        (aiokafka seeks each partition between the reads, so a batch drained
        in between would mix sought and unsought partitions), and never past
        the app's :class:`InputFloor`. Returns the offsets sought to (faust
        sets its read and committed offsets from them) and logs them."""
        consumer = self._ensure_consumer()
        committed: dict[TP, int | None] = {}
        for tp in consumer.assignment():
            committed[tp] = await consumer.committed(tp)
        floor = getattr(self.transport, "input_floor", None)
        targets = dict(committed)
        for tp, offset in committed.items():
            if offset and offset > 0:
                handled = floor.floor(tp) if floor is not None else None
                target = rewind_target(offset, handled)
                if floor is not None and handled is not None and target != offset:
                    floor.rewound(tp, offset, handled)
                    targets[tp] = target
                self._sought(tp)
                consumer.seek(tp, target)
        await self._rewind_uncommitted(committed)
        log.info(
            "seek to committed offsets: %s (dropped %d records fetched before a seek so far)",
            ", ".join(
                f"{tp.topic}[{tp.partition}]={committed[tp]}"
                + (f"->{targets[tp]}" if targets[tp] != committed[tp] else "")
                for tp in sorted(committed)
                if self.app.topics.acks_enabled_for(tp.topic)
            ),
            getattr(self.consumer, "dropped_stale", 0),
        )
        return targets

    async def _rewind_uncommitted(self, committed: Mapping[TP, int | None]) -> None:
        """Seek the app's input partitions that aiokafka's ``seek_to_committed``
        leaves alone: committed at 0 -> 0; nothing committed -> the reset policy."""
        consumer = self._ensure_consumer()
        acks_enabled_for = self.app.topics.acks_enabled_for  # inputs, not changelogs
        uncommitted = []
        for tp, offset in committed.items():
            if not acks_enabled_for(tp.topic):
                continue
            if offset == 0:
                self._sought(tp)
                consumer.seek(tp, 0)
            elif offset is None or offset < 0:
                uncommitted.append(tp)
        if not uncommitted:
            return
        policy = self.app.conf.consumer_auto_offset_reset
        if policy in ("earliest", "latest"):
            for tp in uncommitted:  # aiokafka resets them before its first await
                self._sought(tp)
        if policy == "earliest":
            await consumer.seek_to_beginning(*uncommitted)
        elif policy == "latest":
            await consumer.seek_to_end(*uncommitted)
        log.debug("rewound %s to the %s offset (nothing committed)", uncommitted, policy)

    def verify_event_path(self, now: float, tp: TP) -> None:
        """faust's livelock check of ``tp``, skipped while the partition has no
        position yet (assigned and not yet sought, or awaiting its offset
        reset): faust reads aiokafka's ``position`` there, which asserts one
        exists, and the ``AssertionError`` crashed a worker while its input
        was being sought to committed offsets (measured in the worker kill test)."""
        consumer = self._ensure_consumer()
        assignment = consumer._fetcher._subscriptions.subscription
        state = None
        if assignment is not None:
            aiotp = aiokafka_structs.TopicPartition(tp.topic, tp.partition)
            state = assignment.assignment.state_value(aiotp)
        if state is not None and state.has_valid_position:
            super().verify_event_path(now, tp)

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # faust passes its live set of active partitions, which the main thread
        # changes while this runs here. aiokafka drains (and moves past) the
        # records of every partition in the set it sees, and of *all* partitions
        # when it sees the set empty; faust then drops records of partitions that
        # are not active by the time it looks. A snapshot makes both agree; an
        # empty one fetches nothing (what faust does when it sees it empty).
        snapshot = set(active_partitions)
        if not snapshot:
            return {}
        records = await super()._fetch_records(
            consumer, snapshot, timeout=timeout, max_records=max_records
        )
        # Drained just now, on this thread: no seek ran in between.
        return SoughtRecords(records, dict(self.seeks))


class _Resumed:
    """The rest of a coroutine that has already run up to its first suspension
    (it yielded ``first``), as an awaitable: what ``yield from`` would do."""

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in (a cancellation): passed on into the coroutine
                try:
                    out = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                out = coro.send(sent)
            except StopIteration as done:
                return done.value


class HighwaterConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer running :class:`HighwaterConsumerThread`, seeking
    on it, dropping records of partitions sought since they were fetched, and
    handing each record to the streams without four tasks per record."""

    _batch_seeks: Mapping[TP, int] | None = None

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """mode's ``wait_first``, with a fast path for faust's inner loop.

        faust hands every fetched record to its streams with
        ``wait_first(callback(message), suspend_flow.wait())``: four tasks,
        an ``asyncio.wait`` and three cancellations per record, most of the
        event loop's time (profiled: the trainer read about 3,000 records/s
        while a bare consumer read 40,000). The callback (put the record in
        its stream's buffer) nearly always completes without waiting, so
        when nothing is stopping and the flow is not suspended it is run
        inline first; only when it has to wait (a full buffer) does the rest
        of it go through the general path, which can still interrupt it.
        """
        if (
            timeout is None
            and len(coros) == 2
            and all(asyncio.iscoroutine(c) for c in coros)
            and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        ):
            first, flow = coros
            try:
                suspended = first.send(None)
            except StopIteration as done:
                flow.close()
                return WaitResults([first], [done.value], False)
            except BaseException:
                flow.close()
                raise
            return await super().wait_first(_Resumed(first, suspended), flow)
        return await super().wait_first(*coros, timeout=timeout)

    def _new_consumer_thread(self) -> HighwaterConsumerThread:
        return HighwaterConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: TP, offset: int) -> None:
        # faust runs this on the event loop's thread; the fetcher is the consumer thread's.
        thread = cast(HighwaterConsumerThread, self._thread)
        await thread.call_thread(thread.seek_here, partition, offset)

    _buffer_drained: Event | None = None

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        if self._buffer_drained is not None:
            self._buffer_drained.set()

    async def _wait_next_records(self, timeout: float) -> Any:
        # A partition whose stream buffer is full is taken out of the fetch
        # until the buffer drains (faust's flow control), but faust looks at
        # the partitions again only when its fetch returns: it waits up to its
        # 1 s ``getmany`` timeout for records of the *other* partitions (idle
        # ones wait it out), or, when none is left, sleeps a whole second. The
        # trainer stalled ~0.6 s after every large fetch that way. While a
        # buffer is full, the fetch here waits at most BUFFERED_FETCH_WAIT_S,
        # and with no partition left the fetcher wakes when a buffer drains.
        if self._buffered_partitions:
            timeout = min(timeout, BUFFERED_FETCH_WAIT_S)
            if not self._get_active_partitions() and self.flow_active:
                if self._buffer_drained is None:
                    self._buffer_drained = Event()
                self._buffer_drained.clear()
                await self.wait_for_stopped(self._buffer_drained, timeout=DRAIN_WAIT_S)
        records, active = await super()._wait_next_records(timeout)
        self._batch_seeks = records.seeks if isinstance(records, SoughtRecords) else None
        return records, active

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        seeks = cast(HighwaterConsumerThread, self._thread).seeks
        async for tp, message in super().getmany(timeout):
            fetched = self._batch_seeks  # this batch's (set before its first record)
            if fetched is not None and seeks.get(tp, 0) != fetched.get(tp, 0):
                self.dropped_stale += 1
                log.debug("%s[%d]@%d fetched before a seek: dropped", *tp, message.offset)
                continue
            yield tp, message

    #: Records dropped because their partition was sought after they were fetched.
    dropped_stale: int = 0


class DurableProducer(faust_aiokafka.Producer):
    """faust's aiokafka producer whose ``flush()`` waits for every buffered message.

    Table writes (changelog records) go through faust's ``ProducerBuffer``,
    and faust flushes the producer before it commits input offsets. But the
    buffer's ``flush()`` gives up after one 0.1 s wait while messages are
    still queued (``flush_atmost`` returns on its first timeout), and a
    message the buffer has just dequeued may not be in aiokafka's
    accumulator yet when aiokafka's own flush runs. Either way offsets can
    be committed ahead of the state they produced, and a kill -9 then loses
    that state: measured with the joiner, a restarted worker lost a pending
    feedback and attributed a later one instead.

    Here every message put into the buffer is tracked until the broker
    acknowledges it, and ``flush()`` returns only when all of them are
    acknowledged; a failed send raises, so faust does not commit past it.
    This is plain at-least-once hygiene, the same on Apache Kafka.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacked: set[asyncio.Future[Any]] = set()
        buffered_put = self.buffer.put

        def put(fut: Any) -> None:
            self._unacked.add(fut)
            fut.add_done_callback(self._unacked.discard)
            buffered_put(fut)

        # Instance override: faust's tables and topics call buffer.put directly.
        self.buffer.put = put  # type: ignore[method-assign]

    async def flush(self) -> None:
        await super().flush()
        while self._unacked:  # sends started while we waited are waited for too
            await asyncio.gather(*list(self._unacked))


class HighwaterTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport whose consumers report true high watermarks
    and rewind uncommitted partitions on every seek to committed offsets, and
    whose producer flushes every buffered message before offsets are committed."""

    Consumer = HighwaterConsumer
    Producer = DurableProducer

    #: Bounds seeks to committed offsets (:func:`set_input_floor`); None: none.
    input_floor: InputFloor | None = None


class PromptTableManager(TableManager):
    """faust's table manager without its one-second nap at start.

    faust's ``TableManager.on_start`` sleeps 1 s before it finalizes the tables
    and starts recovery, to give tables created while the app starts a chance
    to register; the consumer does not subscribe before that. Every driftloop
    app declares its tables when it is built, before it starts (a table added
    later still raises faust's "Too late to add tables"), so the wait only
    delayed every start and restart by a second.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def install(app: faust.App) -> None:
    """Give ``app`` the :class:`HighwaterTransport`, when it talks Kafka.

    Call before the app starts (before anything creates its consumer). Apps
    on other transports (e.g. ``memory://``) are left alone.
    """
    urls = app.conf.broker_consumer
    if urls and urls[0].scheme in KAFKA_SCHEMES:
        app.transport = HighwaterTransport(urls, app)
