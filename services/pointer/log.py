"""Reading the ``version-events`` topic, the pointer's durable log.

:func:`read_records` reads every partition from given offsets up to its high
watermark taken from a fetch response (:func:`services.kafka.high_watermarks`),
never from ``end_offsets``, which reads short on the embedded Tansu broker
(ARCHITECTURE.md, "Known quirks"). :class:`KafkaVersionLog` is the
:class:`~services.pointer.base.VersionLog` the pointer consults when a
pointer is missing, and what ``driftloop pointer restore`` reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import kafka.errors
from kafka import TopicPartition

from schemas.codec import decode
from schemas.errors import BrokerError, SchemaError
from schemas.events import VersionEvent
from services.config import KafkaConfig
from services.kafka import high_watermarks, make_consumer
from services.pointer.base import PointerUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedEvent:
    """One record of the topic, decoded (``event`` None when it does not decode)."""

    partition: int
    offset: int
    event: VersionEvent | None


def read_records(
    config: KafkaConfig,
    topic: str,
    start: Mapping[int, int] | None = None,
    *,
    timeout_s: float = 60.0,
) -> tuple[list[LoggedEvent], dict[int, int]]:
    """Every record of ``topic`` from ``start[partition]`` (default 0) to the high watermark.

    Returns the records and the high watermark of each partition read to.
    Records that do not decode as a VersionEvent are returned with ``event``
    None (and logged): the log is read by many tools, one bad record must not
    stop a restore.

    Raises
    ------
    BrokerError
        The topic does not exist, or the broker did not deliver the records in time.
    """
    start = dict(start or {})
    hw = {tp.partition: off for tp, off in high_watermarks(config, [topic]).items()}
    todo = {p: (start.get(p, 0), end) for p, end in hw.items() if start.get(p, 0) < end}
    out: list[LoggedEvent] = []
    if not todo:
        return out, hw
    consumer = make_consumer(config, fetch_max_wait_ms=100)
    try:
        parts = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(parts.values()))
        for p, (first, _end) in todo.items():
            consumer.seek(parts[p], first)
        deadline = time.monotonic() + timeout_s
        pending = set(todo)
        while pending:
            for tp, records in consumer.poll(timeout_ms=200).items():
                end = todo[tp.partition][1]
                for r in records:
                    if r.offset < end:
                        out.append(LoggedEvent(tp.partition, r.offset, _decode(r.value, tp, r)))
            pending = {p for p in pending if consumer.position(parts[p]) < todo[p][1]}
            if pending and time.monotonic() > deadline:
                raise BrokerError(
                    "version-events not read to its high watermark in time",
                    topic=topic,
                    partitions=sorted(pending),
                )
    finally:
        consumer.close(autocommit=False)
    out.sort(key=lambda e: (e.partition, e.offset))
    return out, hw


def _decode(value: bytes | None, tp: TopicPartition, record: object) -> VersionEvent | None:
    try:
        return decode(VersionEvent, value or b"")
    except SchemaError as exc:
        log.warning(
            "version-events %s[%d]@%s is not a VersionEvent: %s",
            tp.topic,
            tp.partition,
            getattr(record, "offset", "?"),
            exc,
        )
        return None


def latest_by_model(events: list[LoggedEvent]) -> dict[str, VersionEvent]:
    """The event with the highest epoch of each model."""
    out: dict[str, VersionEvent] = {}
    for logged in events:
        e = logged.event
        if e is not None and (e.model not in out or e.epoch > out[e.model].epoch):
            out[e.model] = e
    return out


class KafkaVersionLog:
    """The ``version-events`` topic as a :class:`~services.pointer.base.VersionLog`.

    Each call reads the whole topic (pointer changes are few; ``latest`` is
    only asked for a model without a pointer).
    """

    def __init__(self, config: KafkaConfig, topic: str, *, timeout_s: float = 60.0) -> None:
        self.config = config
        self.topic = topic
        self.timeout_s = timeout_s

    def events(self, model: str | None = None) -> Iterator[VersionEvent]:
        """Every decodable event (of ``model``), in log order per partition."""
        for logged in self._read():
            if logged.event is not None and (model is None or logged.event.model == model):
                yield logged.event

    def latest(self, model: str) -> VersionEvent | None:
        return latest_by_model([e for e in self._read() if e.event and e.event.model == model]).get(
            model
        )

    def latest_all(self) -> dict[str, VersionEvent]:
        return latest_by_model(self._read())

    def _read(self) -> list[LoggedEvent]:
        try:
            return read_records(self.config, self.topic, timeout_s=self.timeout_s)[0]
        except (BrokerError, kafka.errors.KafkaError) as exc:
            raise PointerUnavailableError(
                f"cannot read the pointer's log: {exc}", topic=self.topic
            ) from exc
