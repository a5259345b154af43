"""A record sender on librdkafka (confluent-kafka), for the spooled publisher's thread.

:class:`RdKafkaSender` is a :class:`~services.publish.spooled.RecordSender`:
:meth:`~RdKafkaSender.send` queues an already encoded record,
:meth:`~RdKafkaSender.settle` hands the queue to librdkafka (one
``produce_batch`` call per topic), waits for the broker's acknowledgements and
returns the records that were not acknowledged, in send order. The spooled
publisher's thread always sends a whole batch, then settles it.

Why not kafka-python here: its producer batches, partitions (murmur2) and
frames every record in Python: publish + send to the broker took about 80 us
per inference log (``benchmarks/predict.py``'s in-process anchor), on the GIL
the server's requests need. librdkafka does that work in C on its own
threads.

Delivery reports only for failures
----------------------------------
The producer asks librdkafka for delivery reports of failed records only
(``delivery.report.only.error``): a report per acknowledged record was a
Python callback per record, each one taking the GIL back from the request
handlers (with it the sender thread spent 1.2-1.7 us of CPU per record
against the embedded broker, without it about 1 us). Acknowledgement is
then known from the producer's queue: :meth:`~RdKafkaSender.settle` flushes
until the queue is empty (``flush`` serves the failure reports, and a
record leaves the queue only once it is acknowledged or its failure is
reported), so every record not reported failed was acknowledged. When the
queue does not empty (deadline), the producer is purged, which reports
every record it still held as failed; if even then outcomes are missing,
every record not reported failed counts as failed (sent again: at least
once).

Same records as :class:`~services.publish.kafka.KafkaPublisher`: the same
topic, key and bytes, ``acks=all``, the idempotent producer (Tansu accepts
librdkafka's too) and the ``murmur2_random`` partitioner, which for a record
with a key picks the partition Java's and kafka-python's default partitioner
pick, so an inference log lands on the partition of the feedback that shares
its ``request_id`` whichever client wrote that.

Deadline: records still unacknowledged when :meth:`~RdKafkaSender.settle`
returns count as failed. After any failure the producer is abandoned (its
queue purged, never sent later behind the caller's back) and a fresh one is
made on the next settle, as :class:`~services.publish.kafka.KafkaPublisher`
does after a deadline. A record that
was in flight at the purge may still have been written by the broker: the
spooled publisher sends it again from the spool and consumers drop the repeat
by ``event_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas import limits as L
from services.config import KafkaConfig
from services.publish.kafka import Failure, Record

log = logging.getLogger(__name__)


def producer_config(kafka: KafkaConfig, *, linger_ms: int) -> dict[str, Any]:
    """librdkafka settings with the connection and security settings of ``kafka``."""
    kafka._check()  # ConfigError: no bootstrap servers, SASL incomplete
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(kafka.bootstrap_servers),
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol.lower(),
        "request.timeout.ms": kafka.request_timeout_ms,
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        # Reports (Python callbacks) for failed records only (module notes).
        "delivery.report.only.error": True,
        "message.max.bytes": L.PRODUCER_MAX_REQUEST_BYTES,
        # librdkafka logs through Python's logging (warnings such as "Disconnected").
        "logger": logging.getLogger("librdkafka"),
    }
    if kafka.uses_sasl:
        assert kafka.sasl_password is not None  # noqa: S101 - checked by _check above; guards no input
        conf |= {
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": kafka.sasl_username,
            "sasl.password": kafka.sasl_password.get_secret_value(),
        }
    if kafka.uses_ssl:
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if kafka.ssl_check_hostname else "none"
        )
        if kafka.ssl_cafile:
            conf["ssl.ca.location"] = kafka.ssl_cafile
        if kafka.ssl_certfile:
            conf["ssl.certificate.location"] = kafka.ssl_certfile
        if kafka.ssl_keyfile:
            conf["ssl.key.location"] = kafka.ssl_keyfile
        if kafka.ssl_password:
            conf["ssl.key.password"] = kafka.ssl_password.get_secret_value()
    return conf


class RdKafkaSender:
    """Sends records through one librdkafka producer (module notes).

    One thread at a time uses it (the spooled publisher's sender thread).

    Parameters
    ----------
    kafka
        Connection and security settings.
    linger_ms
        How long a record waits for others to share its batch.
    producer_factory
        Builds the producer from its settings (default: ``confluent_kafka.Producer``);
        for tests of failure handling.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        *,
        linger_ms: int = 5,
        producer_factory: Callable[[dict[str, Any]], Producer] | None = None,
    ) -> None:
        self._conf = producer_config(kafka, linger_ms=linger_ms)
        self._factory = producer_factory or Producer
        self._producer: Producer | None = None
        #: Records sent since the last settle, in send order.
        self._records: list[Record] = []
        #: The failed ones, as librdkafka reported them (it reports nothing else).
        self._failed: list[tuple[tuple[str | None, bytes | None, bytes | None], BaseException]] = []

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:  # only failures are reported (module notes); a success is ignored
            self._failed.append(((msg.topic(), msg.key(), msg.value()), KafkaException(err)))

    def send(self, record: Record) -> None:
        """Queue one encoded record; :meth:`settle` hands the queue to librdkafka
        (one ``produce_batch`` call per topic) and reports its outcome."""
        self._records.append(record)

    def _produce(self, records: list[Record]) -> bool:
        """Hand ``records`` to the producer, in order; what it refuses is failed.

        True when every record was handed over (each then has an outcome: its
        acknowledgement, or a failure report); False when the producer could
        not be made or broke midway (it is abandoned).
        """
        try:
            if self._producer is None:
                self._producer = self._factory(self._conf)
            producer = self._producer
            by_topic: dict[str, list[dict[str, bytes]]] = {}
            for record in records:
                by_topic.setdefault(record.topic, []).append(
                    {"value": record.value, "key": record.key}
                )
            for topic, messages in by_topic.items():
                # The partitioner runs per message (partition unassigned); per partition
                # the batch keeps the list's order.
                queued = producer.produce_batch(topic, messages, on_delivery=self._delivered)
                if queued < len(messages):
                    for m in messages:
                        if "_error" in m:
                            cause = KafkaException(m["_error"])
                            self._failed.append(((topic, m["key"], m["value"]), cause))
        except (BufferError, KafkaException) as exc:  # queue full; a fatal producer error
            log.warning("producer refused records: %s", exc)
            # The purge reports what was queued as failed; records it never took have no
            # outcome, and settle counts them failed.
            self._abandon()
            return False
        return True

    def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
        """Wait for every queued record; the number settled and those not acknowledged.

        Failures are in send order. Records still unacknowledged at the
        deadline count as failed and the producer is abandoned (module notes).
        """
        records = self._records
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        handed = self._produce(records) if records else True
        # Every record left the queue: acknowledged, or its failure reported (module notes).
        known = not records
        while self._producer is not None and records:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if self._producer.flush(1.0 if left is None else min(left, 1.0)) == 0:
                known = True
                break
        if self._failed or not known:
            # Before the outcomes are read: the purge reports what the producer still held.
            known = self._abandon() and handed
        failed: dict[tuple[str | None, bytes | None, bytes | None], list[BaseException]] = {}
        for what, cause in self._failed:
            failed.setdefault(what, []).append(cause)
        self._records, self._failed = [], []
        failures: list[Failure] = []
        if failed or not known:
            for record in records:
                causes = failed.get((record.topic, record.key, record.value))
                if causes:
                    cause = causes.pop(0)
                    if isinstance(cause, KafkaException) and _purged(cause):
                        cause = TimeoutError("not acknowledged in time")
                    failures.append((record, cause))
                elif not known:
                    # Which records were acknowledged is unknown: all but the failed count
                    # as failed (sent again: at least once, consumers drop repeats by event_id).
                    failures.append((record, TimeoutError("not acknowledged in time")))
        return len(records), failures

    def _abandon(self) -> bool:
        """Drop the producer and whatever it still holds (never sent later); True when
        every record it held has an outcome (acknowledged, or reported failed)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return True
        try:
            producer.purge(in_queue=True, in_flight=True)
            # Serves the purged records' failure reports; what is left has no outcome.
            return producer.flush(0) == 0 or producer.flush(0.5) == 0
        except KafkaException as exc:
            log.warning("producer purge failed: %s", exc)
            return False

    def close(self, timeout_s: float | None = None) -> None:
        """Let the producer send what is queued for up to ``timeout_s``, then drop it.

        Call :meth:`settle` first to learn about failures: close reports none.
        """
        if self._producer is not None and timeout_s:
            self._producer.flush(timeout_s)
        self._abandon()
        self._records, self._failed = [], []


def _purged(exc: KafkaException) -> bool:
    code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
    return code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
