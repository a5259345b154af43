"""The attribution joiner as a faust agent on changelog-backed tables.

One agent reads ``inference-logs``, ``feedback`` and the internal
``join-repartition`` topic together (faust assigns partition ``p`` of all
three to one worker), decodes each raw record, hands it to
:class:`~services.attribution.RoutedJoin` and sends what comes back:
examples to ``training-examples`` and shadow scores to ``shadow-scores``
(key: model), refusals and undecodable
records to ``dead-letters`` (key: source topic) — all through the one event
publisher (:class:`~services.publish.faust.FaustPublisher`) — records read on another
partition than their request's join partition to ``join-repartition`` at
that partition (raw key and value as read, source coordinates in a header).
Its timer sends the watermark markers the other partitions need
(:mod:`services.attribution.routing`), between two records: a marker never
overtakes the forwards it accounts for. Nothing a producer sends stops the
agent.

Pending state lives in one faust ``Table`` (``join-pending``: request_id ->
JSON bytes, plus one watermark key per input and partition; a single
per-partition key written by earlier versions is read as every input's),
whose changelog is
written to the partition of the record being processed. When a worker dies
or a second one joins, the group rebalances, faust restores each assigned
partition's table state from the changelog, and
:meth:`JoinerWorker.on_rebalance` rebuilds the expiry index from it.
Two things make that hand-over work on the embedded Tansu broker, both in
:func:`streams.app.make_app`: the client-side poll interval is long (a short
one made the members of a two-worker group leave and rejoin in turn, for
ever), and the recovery reads each changelog partition up to its Fetch high
watermark, not Tansu's undercounted ``ListOffsets`` end
(:mod:`streams.kafka_compat`). With faust's default of one standby replica,
a surviving worker already follows the other's changelog partitions, so a
take-over has little left to read.

Delivery: faust flushes the producer (examples, dead letters, changelog)
before it commits input offsets, and the app's producer
(:class:`streams.kafka_compat.DurableProducer`) makes that flush wait until the
broker acknowledged every one of those records (plain faust's flush may
return with changelog writes still buffered). A worker killed after sending an example but
before that commit has its records replayed by the next owner, which may send
the example again with the same ``example_id``; the trainer drops repeats.

The committed offsets are not trusted to be behind the join, though: across
kill -9, now and then an input record's offset was committed although the
record never reached the agent, and its pair was lost (issue 9). faust counts
offsets it never delivered as acknowledged (its "gaps", and a missing record
right at the committed offset, see ``Consumer._new_offset``), so one record
skipped on its way to the agent is committed past. So the table itself
records, per input topic partition, the next offset the join has handled
(``\x00offset:<topic>:<partition>``, written last among each record's
held-back changes, :meth:`TablePendingStore.flush`), and that offset, not the
group's, is the truth:

- every record is judged against it (:mod:`streams.frontier`): one delivered
  past it reveals skipped records; the agent counts it
  (:attr:`JoinStats.skips`), logs it, and seeks the partition back to it, so
  the skipped records are read again;
- at every assignment, after the table's recovery, :meth:`on_rebalance`
  reads it for each owned input partition, and faust's seek to committed
  offsets never goes past it (:class:`streams.kafka_compat.InputFloor`):
  a committed offset beyond the table's is sought back to it, counted
  (:attr:`JoinStats.rewinds`) and logged with both offsets.

Records read again that the table already reflects are known by their
event_ids and change nothing. State written before these offsets were kept
(a watermark, no offset) is taken as it is: nothing is rewound there.

The state a new owner restores can be *ahead* of the committed offsets
(changelog writes that landed after the last commit); the replayed records
are then known by their event_ids and change nothing. That is only safe if
no state write lands before the outputs it accounts for, else a replay would
skip an example that never reached Kafka. So the agent hands a record's
outputs to the producer first and its table changes after
(:meth:`TablePendingStore.flush`); the producer sends at most one request per
broker at a time, in order, so a changelog write is never acknowledged
before the example it records. The remaining gap is a broker error on the
example's batch alone followed by a kill within the producer's retry;
closing that needs Kafka transactions.

A forward is an output of the record it forwards, like an example: sent
before that record's table writes, replayed with it. The owner of the join
partition then finds the replayed copy's event_id already seen (a
duplicate: nothing emitted twice). Markers are sent by the timer between
records, never tied to an offset: a replay after a kill may resend records
a marker already covered, which is harmless for the same reason, and a
marker lost with a dying worker is sent again by the next owner (it
resends every source's state after each rebalance).

Batches: a record's outputs are sent at once, but its state changes are
held back (:class:`TablePendingStore`, reads see them) until the records
already fetched are all handled (the agent's input queue is empty), or
:data:`FLUSH_RECORDS` records are, or the timer ticks, or partitions are
revoked or the agent stops; then they are written in one go, each key once
(an entry put and deleted in the batch not at all), each to the changelog
partition of the record that made it. That keeps the "Delivery" order (state
after the outputs it accounts for) and cuts the changelog from about three
writes per record (entry, watermark, offset) to about one per request. A
worker killed with changes held back loses only them: the table's offsets
are behind the records it handled, so the next owner reads those records
again (as after any commit ahead of the table, above) and resends their
outputs, which consumers drop by id.

Idle inputs: the timer (every ``idle_ms / 4``, at most 1 s) checks each owned
input partition, and tells the joiner whether the agent has handled every
record up to the partition's high watermark, the one carried in fetch
responses (``consumer.highwater``; ``end_offsets`` reads short on Tansu, see
:mod:`streams.kafka_compat`). The release rule itself is in
:mod:`services.attribution.expiry`.

Run a worker with ``python -m streams.joiner`` (settings from
``DRIFTLOOP_KAFKA_*``, ``DRIFTLOOP_TOPIC_*``, ``DRIFTLOOP_JOIN_*``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import errors as aiokafka_errors

from schemas.codec import encode
from schemas.errors import SchemaError
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog, ShadowScore, TrainingExample
from schemas.limits import MAX_PENDING_RAW_BYTES
from services.attribution import (
    FEEDBACK,
    INFERENCE,
    AttributionJoiner,
    Emit,
    JoinerConfig,
    JoinStats,
    Outcome,
    PendingRequest,
    RoutedJoin,
    Scored,
    SourceRef,
    source_input,
    source_inputs,
)
from services.attribution.routing import ROUTE_HEADER, Forward, Marker, parse_route
from services.config import KafkaConfig, TopicsConfig
from services.deadletters import RawRecord, dead_letter, decode_or_dead_letter
from services.kafka import ensure_topics, topic_configs
from services.publish.faust import FaustPublisher
from streams import kafka_compat
from streams.app import make_app, make_worker
from streams.frontier import Frontier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forwarded:
    """An input record forwarded to its join partition of the repartition topic,
    key and value as read, its first source in the route header."""

    key: bytes | None
    value: bytes
    partition: int
    headers: list[tuple[str, bytes]]


#: One output of a record: an example, a shadow score or a dead letter (contract
#: events, sent through the :class:`~services.publish.faust.FaustPublisher`), or
#: a record forwarded to the repartition topic (internal, raw).
Send = TrainingExample | ShadowScore | DeadLetter | Forwarded

#: Table keys that are not request ids start with this character.
_META = "\x00"
#: Prefix of the keys holding the next offset of an input partition the table accounts for.
_OFFSET = f"{_META}offset:"
TABLE_NAME = "join-pending"
#: At most this many records' state changes are held back before a write (see "Batches").
FLUSH_RECORDS = 500


class TablePendingStore:
    """:class:`~services.attribution.PendingStore` on a faust table of JSON bytes.

    Changes are held back until :meth:`flush`: the agent sends a record's
    examples and dead letters first and flushes after, so every changelog
    write reaches the producer after the outputs it accounts for (see
    "Delivery" in the module notes). Reads see the held-back changes.
    The agent flushes after a batch of records, not after each (see
    "Batches" in the module notes): a key changed several times in a batch is
    written once, and an entry put and deleted within one is never written.
    Each change is written to the changelog partition of the record that
    made it (:attr:`partition`, set by the agent before it handles a record),
    so a flush needs no faust event context.
    Parsed entries are cached; the cache is dropped on every rebalance, when
    the table's contents change under it.

    ``table`` is the faust table, or a plain mapping (unit tests: no
    changelog).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        #: The changelog partition of the changes made now (the join
        #: partition of the record being handled); None: a plain mapping.
        self.partition: int | None = None
        self._cache: dict[str, PendingRequest] = {}
        # key -> (changelog partition, value; None deletes): the changes of the
        # records handled (their outputs sent), and of the record being handled
        self._writes: dict[str, tuple[int | None, bytes | None]] = {}
        self._record: dict[str, tuple[int | None, bytes | None]] = {}

    @property
    def held(self) -> int:
        """How many keys have changes held back."""
        return len(self._writes) + len(self._record)

    def get(self, request_id: str) -> PendingRequest | None:
        cached = self._cache.get(request_id)
        if cached is not None:
            return cached
        raw = self._read(request_id)
        if raw is None:
            return None
        entry = PendingRequest.from_bytes(raw)
        self._cache[request_id] = entry
        return entry

    def put(self, entry: PendingRequest) -> None:
        self._record[entry.request_id] = (self.partition, entry.to_bytes())
        self._cache[entry.request_id] = entry

    def delete(self, request_id: str) -> None:
        self._cache.pop(request_id, None)
        self._record[request_id] = (self.partition, None)

    def entries(self, partitions: frozenset[int]) -> Iterator[PendingRequest]:
        self.flush()
        self._cache.clear()
        for key, raw in list(self.table.items()):
            if isinstance(key, str) and key.startswith(_META):
                continue
            entry = PendingRequest.from_bytes(raw)
            if entry.partition in partitions:
                yield entry

    def get_watermark(self, partition: int, input: str) -> int | None:
        raw = self._read(f"{_META}watermark:{partition}:{input}")
        kind, _, source = input.partition(":")
        if raw is None and source == str(partition):
            # state of earlier versions, when only a partition's own topic
            # partitions delivered to it: one key per input kind ...
            raw = self._read(f"{_META}watermark:{partition}:{kind}")
            if raw is None:  # ... or one per partition
                raw = self._read(f"{_META}watermark:{partition}")
        elif raw is None and not source:
            raw = self._read(f"{_META}watermark:{partition}")
        return None if raw is None else int(raw)

    def put_watermark(self, partition: int, input: str, ts: int) -> None:
        self._record[f"{_META}watermark:{partition}:{input}"] = (self.partition, str(ts).encode())

    def get_handled(self, topic: str, partition: int) -> int | None:
        """The next offset of input ``topic[partition]`` the table accounts for
        (None: no record of it handled since offsets were kept)."""
        raw = self._read(f"{_OFFSET}{topic}:{partition}")
        return None if raw is None else int(raw)

    def put_handled(self, topic: str, partition: int, offset: int) -> None:
        """Record that the join handled ``topic[partition]`` up to ``offset``
        (exclusive), with the record's other held-back changes; written last
        at :meth:`flush`, after them."""
        self._record[f"{_OFFSET}{topic}:{partition}"] = (self.partition, str(offset).encode())

    def knows_input(self, partition: int, input: str) -> bool:
        """Whether the table holds a watermark of ``input`` on ``partition``,
        which the join writes with the first record it handles there."""
        return self.get_watermark(partition, input) is not None

    def keep(self) -> None:
        """The record being handled is done (its outputs went to the producer):
        its changes join the batch's, which :meth:`discard` no longer forgets."""
        self._writes.update(self._record)
        self._record.clear()

    def flush(self) -> None:
        """Write the held-back changes to the table, so to its changelog;
        handled offsets last, after the state they account for."""
        self.keep()
        writes = sorted(self._writes.items(), key=lambda item: item[0].startswith(_OFFSET))
        self._writes.clear()
        changelog = getattr(self.table, "send_changelog", None)
        for key, (partition, value) in writes:
            if changelog is None or partition is None:  # a plain mapping
                if value is not None:
                    self.table[key] = value
                elif key in self.table:
                    del self.table[key]
            elif value is not None:  # what Table.__setitem__ does, at a given partition
                changelog(partition, key, value)
                self.table.data[key] = value
            elif key in self.table.data:  # ... and Table.__delitem__
                changelog(partition, key, None, value_serializer="raw")
                del self.table.data[key]

    def discard(self, *, batch: bool = False) -> None:
        """Forget the changes of the record being handled (it will be handled
        again), and with ``batch`` those of the whole batch too."""
        self._record.clear()
        if batch:
            self._writes.clear()
        self._cache.clear()

    def _read(self, key: str) -> bytes | None:
        change = self._record.get(key) or self._writes.get(key)
        if change is not None:
            return change[1]
        raw: bytes | None = self.table.get(key)
        return raw


class JoinerWorker:
    """The joiner's agent, table and topics on one faust app.

    Parameters
    ----------
    app
        The faust app (its id is the consumer group and changelog prefix).
    topics
        Topic names; the inputs must have ``topics.partitions`` partitions.
    config
        Window, grace and policies.
    """

    def __init__(self, app: faust.App, topics: TopicsConfig, config: JoinerConfig) -> None:
        self.app = app
        self.topics = topics
        self.config = config
        self.stats = JoinStats()
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
        self.source = app.topic(
            topics.inference_logs,
            topics.feedback,
            topics.join_repartition,
            value_serializer="raw",
            **raw,
        )
        self.publisher = FaustPublisher(app, topics)
        self.repartition_topic = app.topic(topics.join_repartition, value_serializer="raw", **raw)
        self.table = app.Table(
            TABLE_NAME,
            key_type=str,
            value_type=bytes,  # serialised "raw": the values are our own JSON
            partitions=topics.partitions,
            extra_topic_configs=topic_configs(),  # entries hold events of up to 2 MiB
        )
        self.store = TablePendingStore(self.table)
        self.joiner = AttributionJoiner(
            config, self.store, stats=self.stats, inputs=source_inputs(topics.partitions)
        )
        self.routed = RoutedJoin(self.joiner, topics.partitions)
        # one record's outputs, or one tick's markers, at a time: a marker
        # must never overtake the forwards of a record it accounts for
        self._turn = asyncio.Lock()
        self._handled: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._batch = 0  # records whose state is held back
        #: How far the table accounts for each owned input partition; read by
        #: the consumer thread on every seek to committed offsets (:meth:`floor`).
        self.frontier = Frontier()
        app.agent(self.source, name="attribution-joiner")(self._agent)
        app.on_partitions_revoked.connect(self.on_revoked)
        app.on_rebalance_complete.connect(self.on_rebalance)
        kafka_compat.set_input_floor(app, self)
        interval = min(1.0, config.idle_ms / 4000) if config.idle_ms > 0 else 1.0
        timer: Callable[[], Awaitable[None]] = self.tick
        app.timer(interval, name="attribution-joiner-tick")(timer)

    def _input(self, topic: str, partition: int) -> str:
        kind = INFERENCE if topic == self.topics.inference_logs else FEEDBACK
        return source_input(kind, partition)

    async def tick(self) -> None:
        """The timer: the state a batch still holds back written, the idle check
        (if ``idle_ms``), then the markers due to the other partitions, sent
        between two records."""
        async with self._turn:
            self.flush_state()
            if self.config.idle_ms > 0:
                await self.check_idle()
            await self.send_markers()

    async def send_markers(self) -> None:
        """Send the markers due for the sources this worker owns
        (:meth:`services.attribution.RoutedJoin.markers`). A failed send is
        logged, and its markers are sent again at the next tick."""
        owned = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.topics.inference_logs
        }
        markers = self.routed.markers(owned)
        try:
            for marker in markers:
                await self.repartition_topic.send(
                    key=None,
                    value=b"",
                    partition=marker.partition,
                    headers=[(ROUTE_HEADER, marker.header())],
                )
        except Exception:  # a broker error must not stop the timer: resent next tick
            log.exception("joiner: sending watermark markers failed; resending next tick")
            self.routed.schedule.forget({m.input for m in markers})

    async def check_idle(self) -> None:
        """Report to the joiner, for every owned input partition, whether the
        agent handled every record up to its high watermark from the last
        fetch response (no fetch answer yet: not caught up)."""
        consumer = self.app.consumer
        for tp in sorted(self.app.assignor.assigned_actives()):
            if tp.topic not in (self.topics.inference_logs, self.topics.feedback):
                continue
            highwater: int | None = consumer.highwater(tp)  # None before a fetch
            if highwater is None:
                continue
            handled = self._handled.get((tp.topic, tp.partition))
            if handled is None:  # nothing handled since the assignment
                handled = await consumer.position(tp)
            caught_up = handled is not None and handled >= highwater
            self.joiner.report_caught_up(
                self._input(tp.topic, tp.partition), tp.partition, caught_up
            )

    async def on_revoked(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Called by faust when partitions are revoked (the agent has finished
        its record): write the state the batch held back, then forget every
        floor until the next assignment's table is recovered
        (:meth:`on_rebalance`). A failed write is logged and its state
        forgotten: the next owner reads those records again (the table's
        offsets say from where)."""
        async with self._turn:
            try:
                if self.store.held:
                    self.flush_state()
                    await self.app.producer.flush()  # before the next owner reads the changelog
            except Exception:
                log.exception("joiner: writing the batch's state at a revocation failed")
                self.store.discard(batch=True)
        self.frontier.clear()

    async def on_rebalance(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """Called by faust once a rebalance's table recovery is complete and
        before streams resume (and before faust seeks them to their committed
        offsets): rebuild the joiner's index for the partitions now owned, and
        read from the table how far it accounts for each owned input partition
        (:meth:`floor`). A failure here is logged by faust and fails the worker."""
        actives = sorted(self.app.assignor.assigned_actives())
        owned = {tp.partition for tp in actives if tp.topic == self.topics.inference_logs}
        self._handled.clear()
        floors = self.read_floors(actives)
        self.joiner.rebalance(owned)
        self.routed.schedule.forget()  # tell the other partitions again
        log.info(
            "joiner table accounts for input up to %s (records dropped as fetched before a"
            " seek so far: %d)",
            ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(floors.items())) or "nothing",
            getattr(self.app.consumer, "dropped_stale", 0),
        )
        log.info("joiner owns partitions %s: %s", sorted(owned), self.stats.snapshot())

    def read_floors(self, actives: Iterable[Any]) -> dict[tuple[str, int], int]:
        """Read from the table how far it accounts for each input partition in
        ``actives`` (:func:`table_floor`); these become the floors (:meth:`floor`)."""
        floors: dict[tuple[str, int], int] = {}
        for tp in actives:
            if tp.topic in (self.topics.inference_logs, self.topics.feedback):
                floor = table_floor(
                    self.store, tp.topic, tp.partition, self._input(tp.topic, tp.partition)
                )
                if floor is not None:
                    floors[(tp.topic, tp.partition)] = floor
        self.frontier.reset(floors)
        return floors

    def floor(self, tp: Any) -> int | None:
        """:class:`streams.kafka_compat.InputFloor`: the next offset of ``tp``
        the table accounts for (the consumer thread never seeks past it)."""
        return self.frontier.floor((tp.topic, tp.partition))

    def rewound(self, tp: Any, committed: int, floor: int) -> None:
        """:class:`streams.kafka_compat.InputFloor`: ``tp``'s committed offset was
        past what the table accounts for, and it was sought back: counted
        (:attr:`JoinStats.rewinds`) and logged. Called on the consumer thread."""
        self.stats.rewinds += 1
        log.warning(
            "joiner: %s[%d] committed at %d but its table accounts for it only up to %d:"
            " %d record(s) committed without being joined, read again (rewind %d)",
            tp.topic,
            tp.partition,
            committed,
            floor,
            committed - floor,
            self.stats.rewinds,
        )

    async def _agent(self, stream: Any) -> None:
        # a coroutine, not an async generator: faust logs every value an agent
        # yields at debug level, and its service logger formats that line even
        # when debug is off (6 % of the joiner's CPU at one yield per record)
        queue = getattr(stream.channel, "queue", None)  # records fetched, not yet handled
        try:
            async for event in stream.events():
                message = event.message
                record = RawRecord.of(message)
                where = (record.topic, record.partition)
                verdict = self.frontier.admit(where, record.offset)
                if verdict == "drop":  # queued before a rewind's seek: read again
                    continue
                if verdict == "rewind":
                    async with self._turn:
                        self.flush_state()  # what the seek goes back to
                    await self._rewind_skipped(message.tp, record.offset)
                    continue
                if verdict == "accept":
                    log.warning(
                        "joiner: %s[%d] has no records below %d since %s: a gap in the topic",
                        record.topic,
                        record.partition,
                        record.offset,
                        self.frontier.floor(where),
                    )
                self._handled[where] = record.offset + 1
                async with self._turn:
                    self.store.partition = record.partition  # changelog partition of its changes
                    try:
                        for out in self.handle(record, message.headers):
                            await self._deliver(out)
                    except BaseException:
                        # a send failed: forget this record's changes (it is read
                        # again: the frontier has not passed it); the batch's
                        # records before it sent their outputs and keep theirs
                        self.store.discard()
                        raise
                    batch_done = queue is None or queue.empty()
                    self.handled(record, flush=batch_done or self._batch_full())
        finally:  # stopping: write what the batch did so far (else it is read again)
            try:
                self.flush_state()
            except Exception:
                log.exception("joiner: writing the batch's state at the agent's stop failed")

    def _batch_full(self) -> bool:
        self._batch += 1
        return self._batch >= FLUSH_RECORDS

    def handled(self, record: RawRecord, *, flush: bool = True) -> None:
        """Note ``record``'s state changes, after its outputs went to the
        producer, with the next offset of its partition the table accounts
        for, and write them (``flush``) or hold them for the batch's end (see
        "Delivery" and "Batches")."""
        known = self.store.get_handled(record.topic, record.partition)
        floor = self.frontier.handled((record.topic, record.partition), record.offset, known)
        self.store.put_handled(record.topic, record.partition, floor)
        self.store.keep()
        if flush:
            self.flush_state()

    def flush_state(self) -> None:
        """Write the held-back state changes of the records handled so far, so
        to the changelog (after their outputs, already with the producer)."""
        self._batch = 0
        if self.store.held:
            self.store.flush()

    async def _rewind_skipped(self, tp: Any, offset: int) -> None:
        """The stream delivered ``tp`` at ``offset``, past what the table accounts
        for: records were skipped on their way to the agent. Count and log it,
        and seek ``tp`` back to the table's offset (see :mod:`streams.frontier`)."""
        floor = self.frontier.floor((tp.topic, tp.partition))
        assert floor is not None  # noqa: S101 - Frontier rewinds only past a known floor; narrows the type
        self.stats.skips += 1
        log.warning(
            "joiner: %s[%d] delivered offset %d but its table accounts for it only up to %d:"
            " %d record(s) skipped by delivery, read again (skip %d)",
            tp.topic,
            tp.partition,
            offset,
            floor,
            offset - floor,
            self.stats.skips,
        )
        try:
            await self.app.consumer.seek(tp, floor)
        except aiokafka_errors.IllegalStateError as exc:  # revoked: the next owner rewinds
            log.warning("joiner: seeking %s[%d] back to %d failed: %r", *tp, floor, exc)

    async def _deliver(self, out: Send) -> None:
        if isinstance(out, Forwarded):
            await self.repartition_topic.send(
                key=out.key, value=out.value, partition=out.partition, headers=out.headers
            )
        else:  # topic and key from the event's type, as every publisher does
            await self.publisher.send(out)

    def handle(self, record: RawRecord, headers: Any = None) -> list[Send]:
        """Decode one input or repartition record and join it: what to send
        (:data:`Send`: examples, dead letters, forwards). Never raises for bad input; an
        unexpected failure of the join itself is dead-lettered as ``processing``.
        Every dead letter carries the record's raw bytes (see :meth:`_send`),
        and that of a forwarded record its first source's coordinates."""
        if record.topic == self.topics.join_repartition:
            return self._repartitioned(record, headers)
        try:
            event = self._decode(record.topic == self.topics.inference_logs, record)
            if isinstance(event, DeadLetter):
                return [self._dead(event)]
            results = self.routed.on_event(event, source_of(record, event))
        except Exception as exc:  # a bug or a store failure must not stop the agent
            log.exception(
                "joiner failed on %s[%d]@%d", record.topic, record.partition, record.offset
            )
            return [self._dead(dead_letter(record, exc))]
        out: list[Send] = []
        for result in results:
            if isinstance(result, Forward):
                out.append(
                    Forwarded(
                        record.key,
                        record.value if record.value is not None else b"",
                        result.partition,
                        [(ROUTE_HEADER, result.header())],
                    )
                )
            else:
                out.append(self._send(result, record))
        return out

    def _repartitioned(self, record: RawRecord, headers: Any) -> list[Send]:
        """A record of the repartition topic: a marker, or a forwarded input
        record joined here as a record of where it was first read."""
        try:
            route = parse_route(headers, record.partition)
        except SchemaError as exc:  # not written by a joiner: keep it as read
            return [self._dead(dead_letter(record, exc, kind="decode"))]
        if isinstance(route, Marker):
            try:
                outcomes = self.routed.on_marker(route)
            except Exception as exc:  # e.g. a source of another partition count
                log.exception("joiner failed on marker %s", route)
                return [self._dead(dead_letter(record, exc))]
            return [self._send(outcome, record) for outcome in outcomes]
        where = route.source
        first = RawRecord(where.topic, where.partition, where.offset, record.key, record.value)
        try:
            event = self._decode(route.kind == INFERENCE, first)
            if isinstance(event, DeadLetter):
                return [self._dead(event)]
            outcomes = self.routed.on_forward(route, event, source_of(first, event))
        except Exception as exc:  # a bug or a store failure must not stop the agent
            log.exception(
                "joiner failed on forwarded %s[%d]@%d", first.topic, first.partition, first.offset
            )
            return [self._dead(dead_letter(first, exc))]
        return [self._send(outcome, first) for outcome in outcomes]

    @staticmethod
    def _decode(inference: bool, record: RawRecord) -> InferenceLog | FeedbackEvent | DeadLetter:
        if inference:
            return decode_or_dead_letter(InferenceLog, record)
        return decode_or_dead_letter(FeedbackEvent, record)

    def _dead(self, letter: DeadLetter) -> DeadLetter:
        self.stats.dead_letters[letter.error_kind] += 1
        return letter

    def _send(
        self, outcome: Outcome, current: RawRecord
    ) -> TrainingExample | ShadowScore | DeadLetter:
        """An outcome as the example, shadow score or dead letter to send. A
        refusal of ``current`` (the record being handled) keeps its key and
        value as read; one of an earlier record (an orphan or late feedback held
        in the pending state) keeps the value its :class:`SourceRef` carried,
        else the canonical encoding, which then *is* the value as it arrived."""
        if isinstance(outcome, Emit):
            return outcome.example
        if isinstance(outcome, Scored):
            return outcome.score
        source = outcome.source
        if (source.topic, source.partition, source.offset) == (
            current.topic,
            current.partition,
            current.offset,
        ):
            record, size, digest = current, None, None
        else:
            value = source.raw if source.raw is not None else outcome.value
            record = RawRecord(source.topic, source.partition, source.offset, outcome.key, value)
            size, digest = source.raw_size, source.raw_sha256
        return dead_letter(
            record,
            outcome.reason,
            kind=outcome.kind,
            field=outcome.field,
            value_size=size,
            value_sha256=digest,
        )


def table_floor(store: TablePendingStore, topic: str, partition: int, input: str) -> int | None:
    """The next offset of ``topic[partition]`` (input ``input``) the table
    accounts for: the handled offset it records; 0 when it holds nothing of
    that input at all (no handled offset, no watermark: it has joined none of
    its records); None, unknown, for state written before handled offsets
    were kept (a watermark but no offset)."""
    handled = store.get_handled(topic, partition)
    if handled is not None:
        return handled
    return None if store.knows_input(partition, input) else 0


def source_of(record: RawRecord, event: InferenceLog | FeedbackEvent) -> SourceRef:
    """Where ``event`` came from, with the raw value when it is not ``event``'s
    canonical encoding (so the join state can dead-letter it byte for byte
    later); values over :data:`~schemas.limits.MAX_PENDING_RAW_BYTES` keep
    their start, size and sha256."""
    raw = record.value
    if raw is None or raw == encode(event):
        return SourceRef(topic=record.topic, partition=record.partition, offset=record.offset)
    if len(raw) <= MAX_PENDING_RAW_BYTES:
        return SourceRef(
            topic=record.topic, partition=record.partition, offset=record.offset, raw=raw
        )
    return SourceRef(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        raw=raw[:MAX_PENDING_RAW_BYTES],
        raw_size=len(raw),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
    )


def build_worker(
    app_id: str,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    config: JoinerConfig,
    *,
    datadir: str,
    **settings: Any,
) -> JoinerWorker:
    """A faust app with the joiner on it, ready for :func:`streams.app.make_worker`."""
    app = make_app(app_id, kafka, datadir=datadir, topics=topics, **settings)
    ensure_topics(kafka, [topics.join_repartition], topics)
    return JoinerWorker(app, topics, config)


def main(argv: list[str] | None = None) -> None:
    """Run one joiner worker until SIGTERM/SIGINT (``python -m streams.joiner [APP_ID]``).

    The app id (consumer group) defaults to ``DRIFTLOOP_JOIN_APP_ID`` or
    ``<topic prefix>driftloop-joiner``; the faust data directory to
    ``DRIFTLOOP_JOIN_DATADIR`` or a fresh temporary directory.
    """
    args = sys.argv[1:] if argv is None else argv
    topics = TopicsConfig()
    app_id = (
        args[0]
        if args
        else os.environ.get("DRIFTLOOP_JOIN_APP_ID", f"{topics.prefix}driftloop-joiner")
    )
    datadir = os.environ.get("DRIFTLOOP_JOIN_DATADIR") or tempfile.mkdtemp(prefix="joiner-")
    worker = build_worker(app_id, KafkaConfig(), topics, JoinerConfig(), datadir=datadir)
    level = os.environ.get("DRIFTLOOP_LOG_LEVEL", "info")
    make_worker(worker.app, loglevel=level).execute_from_commandline()


if __name__ == "__main__":
    main()
