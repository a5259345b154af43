"""The model server's stand-in Kafka publisher, until ``services.publish`` ships its own.

:class:`InterimKafkaPublisher` is a :class:`~services.publish.base.DurablePublisher`
over kafka-python (``acks=all``) with **no spool**:

- :meth:`~InterimKafkaPublisher.publish` (inference logs) never waits for the
  broker: it puts the encoded event in a bounded queue (``max_pending``) and
  returns; a sender thread hands queued events to the producer. When the queue
  is full (the broker is away or slower than the traffic) it raises
  :class:`PublishError` at once, and the server counts the log as lost.
- :meth:`~InterimKafkaPublisher.publish_acked` (feedback) sends directly and
  returns once the broker acknowledged every event, else raises within
  ``timeout_s``: with no spool, feedback is refused (503) while the broker is away.
- :meth:`~InterimKafkaPublisher.flush` returns once everything queued before it
  was acknowledged; failures since the last flush raise :class:`PublishError`
  (count and first cause) and are not retried.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from kafka.errors import KafkaError

from schemas import limits as L
from schemas.codec import encode
from schemas.errors import BrokerError
from schemas.events import Event
from services.config import KafkaConfig, TopicsConfig
from services.kafka import make_producer
from services.publish.base import PublishError, route

log = logging.getLogger(__name__)

_Record = tuple[str, bytes, bytes]


class InterimKafkaPublisher:
    """See the module notes. ``max_block_s``: how long kafka-python may wait for
    metadata in one send (the sender thread's, or a feedback call's)."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        *,
        max_block_s: float = 5.0,
        max_pending: int = 50_000,
        bootstrap_timeout_s: float = 30.0,
    ) -> None:
        self.topics = topics
        try:
            self._producer = make_producer(
                kafka,
                linger_ms=5,
                max_block_ms=int(max_block_s * 1000),
                retries=5,
                bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            )
        except KafkaError as exc:
            raise BrokerError(
                f"cannot reach Kafka for the server's publisher: {exc}", bootstrap=kafka.bootstrap
            ) from None
        self._queue: queue.Queue[_Record | None] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._failed = 0
        self._first_cause: str | None = None
        self._sender = threading.Thread(target=self._drain, name="event-sender", daemon=True)
        self._sender.start()

    def _record(self, event: Event) -> _Record:
        topic, key = route(event, self.topics)
        value = encode(event)
        if len(value) > L.MAX_RECORD_VALUE_BYTES:
            raise PublishError("event over the record size limit", topic=topic, size=len(value))
        return topic, key, value

    def _failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            self._first_cause = self._first_cause or f"{type(exc).__name__}: {exc}"

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                topic, key, value = item
                try:
                    self._producer.send(topic, key=key, value=value).add_errback(self._failure)
                except KafkaError as exc:
                    self._failure(exc)
            finally:
                self._queue.task_done()

    def publish(self, event: Event) -> None:
        record = self._record(event)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            raise PublishError(
                f"publish queue full ({self._queue.maxsize} events): the broker is not keeping up",
                topic=record[0],
            ) from None

    def flush(self, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PublishError(f"{self._queue.unfinished_tasks} events not sent in time")
                self._queue.all_tasks_done.wait(left)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            self._producer.flush(timeout=left)
        except KafkaError as exc:
            raise PublishError(f"flush failed: {exc}") from exc
        with self._lock:
            failed, cause = self._failed, self._first_cause
            self._failed, self._first_cause = 0, None
        if failed:
            raise PublishError(f"{failed} events not acknowledged; first: {cause}")

    def publish_acked(self, events: list[Event], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        records = [self._record(e) for e in events]
        futures: list[Any] = []
        try:
            for topic, key, value in records:
                futures.append(self._producer.send(topic, key=key, value=value))
            self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            for future in futures:
                future.get(timeout=max(0.001, deadline - time.monotonic()))
        except (KafkaError, FutureTimeout) as exc:
            raise PublishError(f"not acknowledged within {timeout_s} s: {exc}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (up to ``timeout_s``) and close the producer."""
        self._queue.put(None)
        self._sender.join(timeout_s)
        self._producer.close(timeout=timeout_s)
