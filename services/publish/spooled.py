"""The model servers' publisher: asynchronous, batching, spooling to disk during outages.

:class:`SpooledPublisher` is a :class:`~services.publish.base.DurablePublisher`.
Callers (request handlers) never talk to the broker: :meth:`~SpooledPublisher.publish`
routes and encodes the event and appends it to a bounded in-memory buffer; one
background thread owns the sender (for Kafka an
:class:`~services.publish.rdkafka.RdKafkaSender`, see :meth:`~SpooledPublisher.for_kafka`)
and sends the buffer in batches.

Two modes, one order
--------------------
- *direct*: events wait in the buffer (at most ``max_buffered``); the thread
  sends the oldest ``max_batch`` and removes them once they are acknowledged.
- *spooling*: entered when a batch fails (broker unreachable, timeout) or the
  buffer is full. The buffer, failed records first, is appended to the
  :class:`~services.publish.spool.Spool`, and every later event goes to the
  spool too. The thread retries the spool's oldest records every
  ``retry_s``; once the broker acknowledges them they are removed, and when
  the spool is empty the publisher goes back to direct mode.

So events are sent in the order they were published (spool first, then live
events) and at least once. What does not fit the spool (``max_spool_bytes``)
is dropped: counted in ``dropped`` and the ``driftloop_publish_dropped_total``
metric and logged (first drop, then at most every 10 s with the count), never
silently. Appends by :meth:`publish` reach the operating system at once and
are fsynced at most ``sync_interval_s`` later; :meth:`publish_acked` fsyncs.

None twice downstream
---------------------
The producer is idempotent (Tansu accepts it), so its own retries never
duplicate a record. A record can still reach the topic twice when the broker
wrote it but its acknowledgement did not arrive (the outage began mid-request)
or when the buffer was spilled to the spool while the batch holding it was
in flight: it is then sent again from the spool. Every copy carries the same
``event_id``, and the consumers drop repeats by ``event_id`` (the joiner
counts them as ``duplicates`` and joins once). Delivery is at least once to
the topic and exactly once as consumers see it.

Metrics (on the ``registry`` given, default a private one in ``.registry``):
``driftloop_publish_sent_total``, ``driftloop_publish_spooled_total``,
``driftloop_publish_dropped_total`` (counters, events) and
``driftloop_publish_spool_bytes``, ``driftloop_publish_buffered`` (gauges).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from schemas.errors import SHUTDOWN_EXCEPTIONS
from schemas.events import Event
from services.config import KafkaConfig, TopicsConfig
from services.publish.base import PublishError
from services.publish.kafka import Failure, KafkaPublisher, Record, record_of
from services.publish.rdkafka import RdKafkaSender
from services.publish.spool import DEFAULT_MAX_BYTES, Spool, SpoolFullError

log = logging.getLogger(__name__)


class RecordSender(Protocol):
    """What the background thread sends through (a :class:`KafkaPublisher`, or a fake)."""

    def send(self, record: Record) -> None: ...

    def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]: ...

    def close(self, timeout_s: float | None = None) -> None: ...


@dataclass
class _Ticket:
    """One :meth:`SpooledPublisher.publish_acked` call: its records still unresolved."""

    remaining: int
    done: threading.Event = field(default_factory=threading.Event)
    dropped: int = 0

    def resolve(self, *, dropped: bool = False) -> None:
        """One of its records was acknowledged, spooled or (``dropped``) dropped."""
        self.remaining -= 1
        if dropped:
            self.dropped += 1
        if self.remaining <= 0:
            self.done.set()


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "driftloop_publish_sent", "Events the broker acknowledged", registry=registry
        )
        self.spooled = Counter(
            "driftloop_publish_spooled", "Events written to the local spool", registry=registry
        )
        self.dropped = Counter(
            "driftloop_publish_dropped",
            "Events dropped because the local spool was full",
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "driftloop_publish_spool_bytes", "Bytes waiting in the local spool", registry=registry
        )
        self.buffered = Gauge(
            "driftloop_publish_buffered", "Events waiting in memory", registry=registry
        )


class SpooledPublisher:
    """Publishes from request handlers without waiting for the broker (module notes).

    Parameters
    ----------
    sender_factory
        Builds the sender the background thread uses (called again after a
        close, never concurrently). :meth:`for_kafka` passes a
        :class:`KafkaPublisher`.
    spool_dir
        The spool's directory (one publisher per directory); records left by
        an earlier run are sent first.
    topics
        Topic names.
    max_buffered
        Events held in memory before new ones go to the spool.
    max_batch
        Events sent (and awaited) together.
    max_spool_bytes
        Bound on the spool; what does not fit is dropped and counted.
    settle_timeout_s
        How long the thread waits for a batch's acknowledgement before
        treating the broker as unreachable.
    retry_s
        Pause between attempts to send the spool while the broker is away.
    sync_interval_s
        Longest time a record appended by :meth:`publish` stays un-fsynced.
    gather_s
        How long the thread lets events published with :meth:`publish` gather
        into one batch (fewer, larger produce requests) before sending, unless
        ``max_batch`` are waiting or a :meth:`publish_acked` caller waits (its
        events go at once). 0: send as soon as one waits.
    registry
        Where the metrics are registered (default: a new registry, ``.registry``).
        One SpooledPublisher per registry: the metric names carry no label.
    """

    def __init__(
        self,
        sender_factory: Callable[[], RecordSender],
        spool_dir: Path | str,
        *,
        topics: TopicsConfig | None = None,
        max_buffered: int = 10_000,
        max_batch: int = 500,
        max_spool_bytes: int = DEFAULT_MAX_BYTES,
        settle_timeout_s: float = 10.0,
        retry_s: float = 1.0,
        sync_interval_s: float = 1.0,
        gather_s: float = 0.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.topics = topics if topics is not None else TopicsConfig()
        self.gather_s = gather_s
        self.max_buffered = max_buffered
        self.max_batch = max_batch
        self.settle_timeout_s = settle_timeout_s
        self.retry_s = retry_s
        self.sync_interval_s = sync_interval_s
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry)
        self.spool = Spool(spool_dir, max_bytes=max_spool_bytes)
        self._metrics.spool_bytes.set_function(lambda: self.spool.pending_bytes)
        self._metrics.buffered.set_function(lambda: len(self._buffer))
        #: Events the broker acknowledged / written to the spool / dropped (spool full).
        self.sent = 0
        self.spooled = 0
        self.dropped = 0
        self._factory = sender_factory
        #: Records waiting in memory, oldest first (a batch in flight stays until settled).
        self._buffer: deque[Record] = deque()
        #: The buffered records of :meth:`publish_acked` callers, by ``id``, with their
        #: ticket; a record leaves when it is resolved (acknowledged, spooled, dropped),
        #: so each is resolved once, and records of :meth:`publish` cost nothing here.
        self._tickets: dict[int, tuple[Record, _Ticket]] = {}
        self._spill_gen = 0
        self._spooling = self.spool.pending_records > 0
        self._closing = False
        self._close_by = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._last_drop_log = -1e9
        self._drops_unlogged = 0
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    @classmethod
    def for_kafka(
        cls,
        kafka: KafkaConfig,
        spool_dir: Path | str,
        *,
        topics: TopicsConfig | None = None,
        linger_ms: int = 5,
        client: Literal["rdkafka", "kafka-python"] = "rdkafka",
        max_buffered: int = 10_000,
        max_batch: int = 500,
        max_spool_bytes: int = DEFAULT_MAX_BYTES,
        settle_timeout_s: float = 10.0,
        retry_s: float = 1.0,
        sync_interval_s: float = 1.0,
        gather_s: float = 0.0,
        registry: CollectorRegistry | None = None,
    ) -> SpooledPublisher:
        """A spooled publisher sending to ``kafka`` through librdkafka.

        The sender is an :class:`~services.publish.rdkafka.RdKafkaSender`
        (``client="rdkafka"``, the default: its batching and framing run in C,
        off the GIL the request handlers need) or a kafka-python
        :class:`KafkaPublisher` (``client="kafka-python"``). The other
        arguments are the constructor's.
        """
        settings = topics if topics is not None else TopicsConfig()

        def factory() -> RecordSender:
            if client == "kafka-python":
                return KafkaPublisher(kafka, settings, linger_ms=linger_ms)
            return RdKafkaSender(kafka, linger_ms=linger_ms)

        return cls(
            factory,
            spool_dir,
            topics=settings,
            max_buffered=max_buffered,
            max_batch=max_batch,
            max_spool_bytes=max_spool_bytes,
            settle_timeout_s=settle_timeout_s,
            retry_s=retry_s,
            sync_interval_s=sync_interval_s,
            gather_s=gather_s,
            registry=registry,
        )

    # -- callers -------------------------------------------------------------------------

    @property
    def spooling(self) -> bool:
        """Whether events currently go to the spool (broker away, or spool not drained)."""
        return self._spooling

    def publish(self, event: Event) -> None:
        """Queue ``event``; returns at once (at most a file append).

        Raises PublishError only for an event that can never be sent (over
        its size limit) or after :meth:`close`. A full spool drops it
        (counted, logged).
        """
        self.publish_record(record_of(event, self.topics))

    def publish_record(self, record: Record, kind: type[Event] | None = None) -> None:
        """:meth:`publish` of an event already routed and encoded (``record``); the
        caller vouches that its value is a valid event within its size limit.
        ``kind`` (the event's type) is not needed here."""
        self.publish_records((record,), kind)

    def publish_records(self, records: Sequence[Record], kind: type[Event] | None = None) -> None:
        """:meth:`publish_record` of several records at once, in order (one lock, one
        wake-up: a model server hands over a request's inference logs in one call)."""
        if not records:
            return
        with self._cond:
            self._check_open()
            before = len(self._buffer)
            if not self._spooling and before + len(records) <= self.max_buffered:
                self._buffer.extend(records)
                if before == 0 or before < self.max_batch <= len(self._buffer):
                    # The thread waits for the first event, or gathers until a full batch;
                    # otherwise it is busy and looks at the buffer when it is done.
                    self._cond.notify_all()
                return
            if not self._spooling:
                self._spill(list(records), sync=False)
            else:
                self._to_spool(list(records), sync=False)
            self._cond.notify_all()

    def publish_acked(self, events: Sequence[Event], timeout_s: float) -> None:
        """Return once every event is acknowledged by the broker or fsynced to the spool.

        Waits up to half of ``timeout_s`` for the broker, then spills what is
        still waiting to the spool and fsyncs it.

        Raises
        ------
        PublishError
            An event can never be sent (size), the spool had no room for
            some (:class:`~services.publish.spool.SpoolFullError`), or neither
            happened in time. Events not dropped may still be sent later:
            a retry must reuse their ``event_id``.
        """
        records = [record_of(e, self.topics) for e in events]
        if not records:
            return
        ticket = _Ticket(len(records))
        with self._cond:
            self._check_open()
            for r in records:
                self._tickets[id(r)] = (r, ticket)
            if not self._spooling and len(self._buffer) + len(records) <= self.max_buffered:
                self._buffer.extend(records)
            elif not self._spooling:
                self._spill(records, sync=True)
            else:
                self._to_spool(records, sync=True)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        if not ticket.done.wait(timeout_s / 2):
            with self._cond:
                if not ticket.done.is_set() and any(id(r) in self._tickets for r in records):
                    self._spill([], sync=True)
        if not ticket.done.wait(max(0.0, deadline - time.monotonic())):
            raise PublishError(
                f"{ticket.remaining} of {len(records)} events neither acknowledged nor spooled"
                f" within {timeout_s} s",
                count=ticket.remaining,
            )
        if ticket.dropped:
            raise SpoolFullError(
                f"{ticket.dropped} of {len(records)} events dropped: the spool is full",
                count=ticket.dropped,
                directory=str(self.spool.directory),
            )

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything published before the call is acknowledged or spooled.

        Raises PublishError when that did not happen within ``timeout_s``
        (nothing is lost by that: the events stay queued).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            marker = self._buffer[-1] if self._buffer else None
            while marker is not None and any(e is marker for e in self._buffer):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PublishError("events still waiting in memory", count=len(self._buffer))
                self._cond.wait(left)
            self.spool.sync()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking events, send what waits, stop the thread.

        The buffer is sent (or spooled, broker away), then the spool is sent
        while the broker takes it, for most of ``timeout_s``. Records still in
        the spool then stay there (fsynced) for the next start.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._close_by = time.monotonic() + timeout_s * 0.8
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            if self._buffer:
                self._spill([], sync=True)
            self._closed = True
        self.spool.close()

    def __enter__(self) -> SpooledPublisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise PublishError("publisher is closed")

    # -- spooling (called with the lock held) --------------------------------------------

    def _spill(self, extra: list[Record], *, sync: bool) -> None:
        """Move the buffer, then ``extra``, to the spool; spooling mode from now."""
        records = [*self._buffer, *extra]
        self._buffer.clear()
        self._spill_gen += 1
        self._spooling = True
        waited = bool(self._tickets) and any(id(r) in self._tickets for r in records)
        self._to_spool(records, sync=sync or waited)
        self._cond.notify_all()

    def _to_spool(self, records: list[Record], *, sync: bool) -> None:
        written = self.spool.append(records, sync=sync)
        self.spooled += written
        self._metrics.spooled.inc(written)
        self._resolve(records[:written])
        if written < len(records):
            self._resolve(records[written:], dropped=True)
            self._drop(len(records) - written)

    def _resolve(self, records: list[Record], *, dropped: bool = False) -> None:
        """Tell the :meth:`publish_acked` callers waiting for some of ``records``, once."""
        if not self._tickets:
            return  # the common case: nobody waits (inference logs)
        for record in records:
            held = self._tickets.pop(id(record), None)
            if held is not None:
                held[1].resolve(dropped=dropped)

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._metrics.dropped.inc(count)
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            log.error(
                "event spool %s is full (%d bytes): %d events dropped (%d in all)",
                self.spool.directory,
                self.spool.max_bytes,
                self._drops_unlogged,
                self.dropped,
            )
            self._last_drop_log = now
            self._drops_unlogged = 0

    def _acked(self, records: list[Record]) -> None:
        self.sent += len(records)
        self._metrics.sent.inc(len(records))
        self._resolve(records)

    # -- the background thread -----------------------------------------------------------

    def _run(self) -> None:
        sender: RecordSender | None = None
        last_sync = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not (self._buffer or self._spooling or self._closing):
                        self._cond.wait(self.sync_interval_s)
                        if self.spool.unsynced:
                            break
                    if self.spool.unsynced and time.monotonic() - last_sync >= self.sync_interval_s:
                        self.spool.sync()
                        last_sync = time.monotonic()
                    self._gather()
                    spooling, closing = self._spooling, self._closing
                    batch = [] if spooling else list(itertools.islice(self._buffer, self.max_batch))
                    gen = self._spill_gen
                try:
                    if sender is None:
                        sender = self._factory()
                    if spooling:
                        progressed = self._send_spool(sender)
                    elif batch:
                        self._send_buffer(sender, batch, gen)
                        progressed = True
                    else:
                        progressed = True
                except SHUTDOWN_EXCEPTIONS:
                    raise
                except Exception:
                    # A bug or a sender that broke: never lose the thread (events would pile
                    # up in the spool for good). Spool what waits, start a fresh sender.
                    log.exception("event publisher: sending failed; retrying with a new sender")
                    with self._cond:
                        if self._buffer:
                            self._spill([], sync=False)
                        self.spool.rewind()
                    if sender is not None:
                        sender.close(timeout_s=0)
                        sender = None
                    progressed = False
                if closing:
                    drained = spooling and progressed and time.monotonic() < self._close_by
                    if not drained and (spooling or not batch):
                        return  # sent what the broker took in time; the spool keeps the rest
                if not progressed:
                    with self._cond:
                        self._cond.wait(self.retry_s)
        finally:
            if sender is not None:
                sender.close(timeout_s=0)

    def _gather(self) -> None:
        """Let published events gather for ``gather_s`` (called with the lock held)."""
        if self.gather_s <= 0:
            return
        deadline = time.monotonic() + self.gather_s
        while (
            self._buffer
            and not self._spooling
            and not self._closing
            and len(self._buffer) < self.max_batch
            and not self._tickets
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _send_buffer(self, sender: RecordSender, batch: list[Record], gen: int) -> None:
        for record in batch:
            sender.send(record)
        _total, failures = sender.settle(self.settle_timeout_s)
        failed = {id(record) for record, _ in failures}
        with self._cond:
            self._acked([r for r in batch if id(r) not in failed] if failed else batch)
            if gen == self._spill_gen:
                for _ in batch:
                    self._buffer.popleft()
                if failures:
                    _record, cause = failures[0]
                    log.warning(
                        "broker did not acknowledge %d of %d events (%s: %s);"
                        " spooling to %s until it does",
                        len(failures),
                        len(batch),
                        type(cause).__name__,
                        cause,
                        self.spool.directory,
                    )
                    rest = list(self._buffer)
                    self._buffer.clear()
                    self._buffer.extend(r for r in batch if id(r) in failed)
                    self._buffer.extend(rest)
                    self._spill([], sync=False)
            self._cond.notify_all()

    def _send_spool(self, sender: RecordSender) -> bool:
        """Send the spool's oldest records; True when some were acknowledged."""
        with self._cond:
            batch = self.spool.read(self.max_batch)
            if not batch:
                self._spooling = False
                log.info("event spool %s drained; sending directly again", self.spool.directory)
                self._cond.notify_all()
                return True
        for item in batch:
            sender.send(item.record)
        _total, failures = sender.settle(self.settle_timeout_s)
        failed = {id(record) for record, _ in failures}
        good = 0
        while good < len(batch) and id(batch[good].record) not in failed:
            good += 1
        with self._cond:
            if good:
                self.spool.ack(batch[good - 1])
                self.sent += good
                self._metrics.sent.inc(good)
            if failures:
                self.spool.rewind()
            self._cond.notify_all()
        return good > 0
