"""The kafka-python :class:`~services.publish.base.EventPublisher`.

:class:`KafkaPublisher` sends each event (encoded with
:func:`schemas.codec.encode`) to the topic and key :func:`~services.publish.base.route`
gives it, through one ``KafkaProducer`` built by :func:`services.kafka.make_producer`
(so security settings, ``acks="all"`` and ``max_request_size`` are the
project's). Records are batched for ``linger_ms``.

Sizes: an event whose encoding is over its type's ``max_payload_bytes`` (what
consumers accept, :mod:`schemas.limits`) is refused at :meth:`publish` with a
:class:`~services.publish.base.PublishError`; it could never be decoded.

Idempotence: the producer is idempotent (``enable_idempotence=True``, one
request in flight per connection), which the embedded Tansu 0.6 broker
accepts: the producer's own retries never duplicate or reorder a record
within one producer session. A record whose acknowledgement was lost (the
broker went away after writing it) and that the caller sends again is a new
record; consumers drop it by ``event_id`` (ARCHITECTURE.md).

Flush: :meth:`flush` follows the contract of :mod:`services.publish.base`.
When some records are still unacknowledged at its deadline the producer is
closed without waiting (its queued batches are abandoned, never sent later
behind the caller's back) and a fresh one is made on the next send, so a
failed event is never retried silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from schemas import limits as L
from schemas.codec import encode
from schemas.events import Event
from services.config import KafkaConfig, TopicsConfig
from services.kafka import make_producer
from services.publish.base import PublishError, route

log = logging.getLogger(__name__)

#: Default time records wait to be batched with others.
DEFAULT_LINGER_MS = 5


class Record(NamedTuple):
    """One Kafka record as driftloop writes it: topic, key and encoded event.

    A named tuple, not a frozen dataclass: a model server makes one per
    prediction, and this one takes 0.27 us to make instead of 0.62 us. Holders
    that track records in flight tell them apart by identity (``id``).
    """

    topic: str
    key: bytes
    value: bytes


#: A record that was not acknowledged, and why.
Failure = tuple[Record, BaseException]


def record_of(event: Event, topics: TopicsConfig) -> Record:
    """``event`` routed and encoded; PublishError when it can never be sent."""
    topic, key = route(event, topics)
    value = encode(event)
    limit = min(type(event).max_payload_bytes, L.MAX_RECORD_VALUE_BYTES)
    if len(value) > limit:
        raise PublishError(
            f"{type(event).__name__} encodes to {len(value)} bytes, over the limit of {limit}",
            topic=topic,
            event_id=event.event_id,
        )
    return Record(topic, key, value)


def publish_error(failures: list[Failure], total: int) -> PublishError:
    """The PublishError for ``failures`` (count and first cause)."""
    record, cause = failures[0]
    return PublishError(
        f"{len(failures)} of {total} events not acknowledged by the broker;"
        f" first: {type(cause).__name__}: {cause}",
        count=len(failures),
        topic=record.topic,
    )


class KafkaPublisher:
    """Publishes events through one kafka-python producer.

    Parameters
    ----------
    kafka
        Connection and security settings.
    topics
        Topic names (prefix).
    linger_ms
        How long a record waits for others to share its batch.
    max_block_ms
        How long :meth:`send` may wait for metadata or buffer space (the
        broker unreachable); after it the record counts as failed.
    idempotent
        ``enable_idempotence`` of the producer (see the module notes).
    producer_factory
        Builds the producer (default: :func:`services.kafka.make_producer`
        with the settings above); for tests of failure handling.

    Thread safety: :meth:`publish`, :meth:`send`, :meth:`settle` and
    :meth:`flush` share one queue of records, so one thread at a time uses
    them (the spooled publisher's sender thread); :meth:`publish_acked` may be
    called from any number of threads.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig | None = None,
        *,
        linger_ms: int = DEFAULT_LINGER_MS,
        max_block_ms: int = 5_000,
        idempotent: bool = True,
        producer_factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics if topics is not None else TopicsConfig()
        self._factory = producer_factory or (
            lambda: make_producer(
                kafka,
                linger_ms=linger_ms,
                max_block_ms=max_block_ms,
                enable_idempotence=idempotent,
                max_in_flight_requests_per_connection=1,
            )
        )
        self._producer: KafkaProducer | None = None
        self._pending: list[tuple[Record, Any]] = []
        self._failed: list[Failure] = []
        self._factory_error: KafkaError | None = None
        self._lock = threading.Lock()

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            if self._factory_error is not None:  # no broker: fail fast until the next settle
                raise self._factory_error
            try:
                self._producer = self._factory()
            except KafkaError as exc:
                self._factory_error = exc
                raise
        return self._producer

    def publish(self, event: Event) -> None:
        """Queue ``event`` (PublishError at once if it is over its size limit)."""
        self.send(record_of(event, self.topics))

    def send(self, record: Record) -> None:
        """Queue one already encoded record; a failure is reported by :meth:`settle`."""
        with self._lock:
            try:
                future = self._ensure_producer().send(
                    record.topic, key=record.key, value=record.value
                )
            except KafkaError as exc:  # no metadata, buffer full, no broker at all
                self._failed.append((record, exc))
                return
            self._pending.append((record, future))

    def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
        """Wait for every queued record; the number settled and those not acknowledged.

        Failures are in send order. Records still in flight at the deadline
        count as failed and the producer is abandoned (module notes).
        """
        with self._lock:
            pending, self._pending = self._pending, []
            failures, self._failed = self._failed, []
            self._factory_error = None
            total = len(pending) + len(failures)
            if self._producer is not None and pending:
                try:
                    self._producer.flush(timeout=timeout_s)
                except KafkaError as exc:
                    log.warning("producer flush did not complete: %s", exc)
            stuck = False
            for record, future in pending:
                if not future.is_done:
                    stuck = True
                    failures.append((record, TimeoutError("not acknowledged in time")))
                elif future.failed():
                    failures.append((record, future.exception))
            if stuck:
                self._abandon()
            return total, failures

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for the broker's acknowledgement of every queued event.

        Raises
        ------
        PublishError
            Some were not acknowledged: how many, and the first cause. They
            are not retried.
        """
        total, failures = self.settle(timeout_s)
        if failures:
            raise publish_error(failures, total)

    def publish_acked(self, events: list[Event], timeout_s: float) -> None:
        """Publish ``events`` and wait for the broker's acknowledgement of each (no spool).

        Safe to call from several threads at once: each call waits for its
        own records only, and a timeout does not abandon the producer, so
        events of a failed call may still arrive; send them again with the
        same ``event_id`` (consumers drop the repeat).

        Raises
        ------
        PublishError
            An event can never be sent (nothing was queued), or some were not
            acknowledged within ``timeout_s``.
        """
        records = [record_of(e, self.topics) for e in events]  # all checked before any is sent
        deadline = time.monotonic() + timeout_s
        futures: list[tuple[Record, Any]] = []
        failures: list[Failure] = []
        with self._lock:
            for record in records:
                try:
                    producer = self._ensure_producer()
                    futures.append(
                        (record, producer.send(record.topic, key=record.key, value=record.value))
                    )
                except KafkaError as exc:
                    failures.append((record, exc))
            self._factory_error = None
        for record, future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as exc:
                failures.append((record, exc))
        if failures:
            raise publish_error(failures, len(records))

    def _abandon(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            _close(producer, 0)

    def close(self, timeout_s: float | None = None) -> None:
        """Close the producer, letting it send what is queued for up to ``timeout_s``.

        Call :meth:`flush` first to learn about failures: close reports none.
        Whatever is still queued at the deadline is abandoned, never sent.
        """
        with self._lock:
            producer, self._producer = self._producer, None
            self._pending = []
        if producer is not None:
            _close(producer, timeout_s)


def _close(producer: KafkaProducer, timeout_s: float | None) -> None:
    """Close ``producer``; batches still queued at the deadline are aborted, not sent.

    kafka-python 2.x/3.0 ``close(timeout)`` raises from its flush when the
    deadline passes *before* it force-closes its sender thread, leaving the
    producer open (and sending later, behind our back). So the force close
    is done here, through the sender the producer owns.
    """
    try:
        producer.close(timeout=timeout_s)
    except KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()  # aborts the queued batches: their futures fail
            sender.join(5)
        producer._closed = True  # closed by hand above; stops __del__ closing it again
    except KafkaError as exc:
        log.warning("producer did not close cleanly: %s", exc)
