"""Co-partitioning by the value's request_id, whatever the producer's partitioner.

The join needs a request's inference log and its feedback on one partition,
but a producer decides where its records land: Kafka's Java client (and
kafka-python) hash the key with murmur2, librdkafka (Go, Python's
confluent-kafka, C#), Node and others default to other hashes, and a record
may carry no key or a wrong one. So the joiner does not trust the input
partition. Every request has one **join partition**, a documented function of
the value's ``request_id`` (:func:`join_partition`: Kafka's default
partitioner applied to the request_id's UTF-8 bytes). The worker owning input
partition ``q`` decodes each record of it; a record whose join partition is
``q`` is joined there, any other is **forwarded** to the repartition topic
(``join-repartition``, same partition count) at its join partition ``p``,
with its source topic, partition and offset and its raw key and value, and
joined by the owner of ``p`` as a record of its original input. A producer
that keys by request_id with the Java default partitioner therefore costs no
forwarding; any other costs one extra write and read per misplaced record.

Watermarks
----------
Each *source*, an input topic partition (:func:`source_input`:
``"inference:3"``), has one event-time watermark, the largest ``ts`` it
delivered, and every source can now deliver to every join partition. A
partition's closing watermark is therefore the minimum over all ``2 x N``
sources. The owner of ``q`` knows the watermarks of its own sources
exactly; it tells every other partition through **markers** in the
repartition topic: "source ``inference:q`` is at ``ts`` W" (and whether it is
idle). A marker is sent after the forwards of every record it accounts for,
by the same producer into the same repartition partition, so a join
partition that has applied marker W of a source has also received every
record of that source that was forwarded to it before W was reached. Each
forward also carries its source's watermark just before it (``before``), so
lateness is judged exactly as if the record had been read locally: a
property of its own topic partition's sequence, the same for every
interleaving and every routing. The module docstring of
:mod:`services.attribution.expiry` gives the argument; it holds per source.

Markers are sent by the worker's timer (:meth:`MarkerSchedule.due`), for a
source whose watermark moved since its last marker, and every ``idle_ms / 2``
for an idle source (a heartbeat: the release lapses where it is not
repeated for ``idle_ms``). A
source released as idle by its owner is released on every join partition
(:meth:`AttributionJoiner.on_marker`).

The records on the repartition topic keep the original raw value and key;
what they are is in one header, :data:`ROUTE_HEADER` (JSON, see
:meth:`Forward.header` and :meth:`Marker.header`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.partitioner.default import murmur2

from schemas.errors import SchemaError
from schemas.events import FeedbackEvent, InferenceLog
from services.attribution.expiry import FEEDBACK, INFERENCE
from services.attribution.joiner import AttributionJoiner, Outcome
from services.attribution.state import SourceRef

#: The header that says what a repartition record is.
ROUTE_HEADER = "driftloop-route"
KINDS: tuple[str, ...] = (INFERENCE, FEEDBACK)


def join_partition(request_id: str, partitions: int) -> int:
    """The partition a request is joined on: Kafka's default (Java) partitioner
    of its UTF-8 bytes, ``(murmur2(request_id) & 0x7fffffff) % partitions``.

    A producer that keys records by request_id with that partitioner (Java,
    kafka-python, or librdkafka's ``partitioner=murmur2_random``) puts every
    record on its join partition, and nothing is forwarded.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    hashed: int = murmur2(request_id.encode("utf-8"))
    return (hashed & 0x7FFFFFFF) % partitions


def source_input(kind: str, partition: int) -> str:
    """The join-input name of topic ``kind`` (``inference`` / ``feedback``)'s ``partition``."""
    if kind not in KINDS:
        raise ValueError(f"unknown join input kind {kind!r}")
    return f"{kind}:{partition}"


def source_inputs(partitions: int) -> tuple[str, ...]:
    """Every source of a join over ``partitions`` partitions: each can deliver to each partition."""
    return tuple(source_input(kind, q) for kind in KINDS for q in range(partitions))


def kind_of(input: str) -> tuple[str, int]:
    """``(kind, partition)`` of a source name made by :func:`source_input`."""
    kind, _, partition = input.partition(":")
    if kind not in KINDS or not partition.isdigit():
        raise ValueError(f"not a join source name: {input!r}")
    return kind, int(partition)


@dataclass(frozen=True)
class Forward:
    """A record joined on another partition than the one it was read from.

    ``partition`` is its join partition (the repartition topic's partition to
    write it to), ``input`` its source (:func:`source_input`), ``source`` where
    it was read (the raw value is sent alongside, not in ``source``) and
    ``before`` its source's watermark just before it (None: the source had
    delivered nothing before).
    """

    partition: int
    input: str
    source: SourceRef
    before: int | None

    @property
    def kind(self) -> str:
        return kind_of(self.input)[0]

    def header(self) -> bytes:
        return _dump(
            {
                "type": "forward",
                "input": self.input,
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
                "before": self.before,
            }
        )


@dataclass(frozen=True)
class Marker:
    """ "Source ``input`` has delivered up to ``ts`` (None: nothing yet) and is
    ``idle`` (released by its owner) or not", for join partition ``partition``."""

    partition: int
    input: str
    ts: int | None
    idle: bool

    def header(self) -> bytes:
        return _dump({"type": "marker", "input": self.input, "ts": self.ts, "idle": self.idle})


Route = Forward | Marker


def _dump(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


def parse_route(headers: Any, partition: int) -> Route:
    """The :class:`Forward` or :class:`Marker` a repartition record read from
    ``partition`` is, from its headers (a list of ``(name, bytes)`` pairs or a
    mapping, as clients give them).

    Raises
    ------
    SchemaError
        No route header, or one that does not describe a forward or marker.
    """
    items = headers.items() if hasattr(headers, "items") else (headers or ())
    raw = next((value for name, value in items if name == ROUTE_HEADER), None)
    if raw is None:
        raise SchemaError(f"repartition record without a {ROUTE_HEADER!r} header")
    try:
        fields = json.loads(bytes(raw))
        kind_of(fields["input"])
        if fields["type"] == "forward":
            before = fields["before"]
            source = SourceRef(
                topic=fields["topic"], partition=fields["partition"], offset=fields["offset"]
            )
            if before is not None and not isinstance(before, int):
                raise TypeError("before is not an integer")
            return Forward(partition, fields["input"], source, before)
        if fields["type"] == "marker":
            ts, idle = fields["ts"], fields["idle"]
            if (ts is not None and not isinstance(ts, int)) or not isinstance(idle, bool):
                raise TypeError("ts or idle of the wrong type")
            return Marker(partition, fields["input"], ts, idle)
        raise ValueError(f"unknown route type {fields['type']!r}")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise SchemaError(f"bad {ROUTE_HEADER!r} header: {exc}") from exc


class MarkerSchedule:
    """Which markers a worker owes the other partitions, per owned source.

    :meth:`due` is called from the worker's timer with the watermarks of the
    sources it owns; a source is due when its ``(ts, idle)`` changed since it
    was last sent, and, while it is idle, again every ``heartbeat_ms`` (the
    release lapses at a partition that hears nothing for ``idle_ms``, so
    keep it well below that: the worker uses ``idle_ms / 2``). The caller
    must call it only between records (never while a record's forwards are
    still unsent), so a marker never overtakes them.
    """

    def __init__(self, partitions: int, heartbeat_ms: int = 0) -> None:
        self.partitions = partitions
        self.heartbeat_ms = heartbeat_ms
        self._sent: dict[str, tuple[int | None, bool, int]] = {}  # input -> ts, idle, when

    def due(self, owned: Iterable[tuple[str, int | None, bool]], now_ms: int = 0) -> list[Marker]:
        """Markers for ``owned`` sources ``(input, watermark, idle)`` at
        wall-clock ``now_ms``, to every partition but the source's own."""
        out: list[Marker] = []
        for input, ts, idle in owned:
            last = self._sent.get(input)
            if last is None:
                if ts is None and not idle:
                    continue  # delivered nothing, never idle: nothing to say
            elif last[:2] == (ts, idle) and not (idle and now_ms - last[2] >= self.heartbeat_ms):
                continue
            self._sent[input] = (ts, idle, now_ms)
            own = kind_of(input)[1]
            out.extend(Marker(p, input, ts, idle) for p in range(self.partitions) if p != own)
        return out

    def forget(self, inputs: Iterable[str] | None = None) -> None:
        """Send ``inputs`` (default: every source) again at the next call:
        after a rebalance, or when a send failed."""
        if inputs is None:
            self._sent.clear()
        for input in inputs or ():
            self._sent.pop(input, None)


class RoutedJoin:
    """An :class:`AttributionJoiner` over sources that may deliver to any partition.

    The agent (``streams/joiner.py``) decodes records and calls
    :meth:`on_event` for an input record, :meth:`on_forward` /
    :meth:`on_marker` for a repartition record, and :meth:`markers` from its
    timer; it sends the :class:`Forward` and :class:`Marker` results to the
    repartition topic and the outcomes as before. The joiner must have been
    built with ``inputs=source_inputs(partitions)``.
    """

    def __init__(self, joiner: AttributionJoiner, partitions: int) -> None:
        expected = source_inputs(partitions)
        if joiner.watermarks.inputs != expected:
            raise ValueError(
                f"the joiner's inputs {joiner.watermarks.inputs} are not the sources of "
                f"{partitions} partitions {expected}"
            )
        self.joiner = joiner
        self.partitions = partitions
        # an idle source's heartbeat: well inside the idle_ms after which
        # its release lapses where no marker came
        self.schedule = MarkerSchedule(partitions, heartbeat_ms=joiner.config.idle_ms // 2)

    def on_event(
        self, event: InferenceLog | FeedbackEvent, source: SourceRef
    ) -> list[Outcome | Forward]:
        """A decoded record read from input partition ``source.partition``:
        joined here when that is its join partition, else forwarded (and this
        partition's watermark of its source advanced)."""
        kind = INFERENCE if isinstance(event, InferenceLog) else FEEDBACK
        input = source_input(kind, source.partition)
        target = join_partition(event.request_id, self.partitions)
        if target == source.partition:
            if isinstance(event, InferenceLog):
                return list(self.joiner.on_inference(event, source, input))
            return list(self.joiner.on_feedback(event, source, input))
        before, closed = self.joiner.route(source.partition, input, event.ts)
        return [*closed, Forward(target, input, source, before)]

    def on_forward(
        self, forward: Forward, event: InferenceLog | FeedbackEvent, source: SourceRef
    ) -> list[Outcome]:
        """A forwarded record, decoded, read on join partition ``forward.partition``;
        ``source`` is where it was first read (with its raw bytes when needed)."""
        kind, _ = kind_of(forward.input)
        if join_partition(event.request_id, self.partitions) != forward.partition:
            raise ValueError(
                f"request {event.request_id!r} forwarded to partition {forward.partition}, "
                f"its join partition is {join_partition(event.request_id, self.partitions)}"
            )
        if kind == INFERENCE and isinstance(event, InferenceLog):
            return self.joiner.on_inference(
                event, source, forward.input, partition=forward.partition, before=forward.before
            )
        if kind == FEEDBACK and isinstance(event, FeedbackEvent):
            return self.joiner.on_feedback(
                event, source, forward.input, partition=forward.partition, before=forward.before
            )
        raise ValueError(f"a {type(event).__name__} forwarded as {forward.input}")

    def on_marker(self, marker: Marker) -> list[Outcome]:
        """A marker read on join partition ``marker.partition``."""
        return self.joiner.on_marker(marker.partition, marker.input, marker.ts, marker.idle)

    def markers(self, owned: Iterable[int]) -> list[Marker]:
        """The markers due for the sources of the input partitions ``owned``
        (call between records, after :meth:`AttributionJoiner.report_caught_up`)."""
        marks = self.joiner.watermarks
        sources = [
            (input, marks.get(q, input), marks.is_idle(q, input))
            for q in sorted(owned)
            for input in (source_input(kind, q) for kind in KINDS)
        ]
        return self.schedule.due(sources, self.joiner.clock())
