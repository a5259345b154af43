"""Records at and over every size limit: dead letters that fit, an agent that keeps going.

Guards issue 9, items 3 and 4. A 1.5 MB string feature and a 3 MB payload
made dead letters of 2.0 and 2.8 MB that the worker's producer refused
(``MessageSizeTooLargeError``): the joiner agent crashed and restarted and
both records were skipped without a dead letter. And dead letters of late and
orphan feedback held a re-encoded event, not the bytes that were sent.

A real ``driftloop worker --role joiner`` reads, on one partition: an
inference log with a feature string at its schema limit and one far over it,
a payload of exactly the event limit, one byte over, 3 MB, and one just under
the topic's ``max.message.bytes`` and one over it (which an Apache Kafka
broker refuses but the embedded broker admits); feedback written the way another producer
might (spaces, defaults left out), one late and one whose inference never
comes; then a normal pair. Every bad record yields exactly one dead letter
that fits the topic, with the record's size and sha256 and its bytes (a
prefix when cut); the agent never crashed; the good pairs are joined.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kafka.errors import KafkaError

from schemas import limits as L
from schemas.codec import decode, encode
from schemas.events import DeadLetter, InferenceLog, TrainingExample
from services.attribution import join_partition
from services.kafka import high_watermarks, make_producer
from tests.integration._procs import WorkerProcess, read_topic, wait_committed, worker_env

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

T0 = 50_000  # event time of the phase-1 requests, ms


def _joined_on_partition_0(partitions: int) -> str:
    """A request id joined on partition 0, where every record is written, so
    the phase-2 pair's watermark closes its window. (The sources of partitions
    1 and 2 deliver nothing: the window closes once they are released as idle,
    or, when every source was released at once, at the least watermark any of
    them reached: see services.attribution.expiry.)"""
    return next(
        rid
        for rid in (f"orphan-{i}" for i in itertools.count())
        if join_partition(rid, partitions) == 0
    )


WINDOW_MS, GRACE_MS = 10_000, 20_000


def _log(rid: str, ts: int = T0, *, feature: str = "fr", pad_to: int | None = None) -> bytes:
    data = encode(
        InferenceLog.new(
            event_id=f"i-{rid}",
            request_id=rid,
            model="ctr",
            model_version="v1",
            ts=ts,
            features={"x": 1.0, "country": feature},
            prediction=0.5,
        )
    )
    if pad_to is not None:  # JSON allows whitespace: the same event, pad_to bytes long
        data += b" " * (pad_to - len(data))
    return data


def _foreign_feedback(rid: str, ts: int = T0 + 100) -> bytes:
    """A valid feedback event as another producer writes it: not driftloop's encoding."""
    fields: dict[str, Any] = {
        "label": 1,
        "model": "ctr",
        "request_id": rid,
        "ts": ts,
        "event_id": f"f-{rid}",
        "schema_version": 1,
    }
    return json.dumps(fields, indent=2).encode()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_oversized_and_refused_records_each_yield_one_dead_letter_that_fits(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    inf, fb = sandbox.topics.inference_logs, sandbox.topics.feedback
    group = f"joiner-{sandbox.name}"
    env = worker_env(
        sandbox,
        app_id=group,
        commit_interval_s=0.3,
        DRIFTLOOP_WORKER_DATADIR=str(tmp_path / "joiner-data"),
        DRIFTLOOP_JOIN_WINDOW_MS=str(WINDOW_MS),
        DRIFTLOOP_JOIN_GRACE_MS=str(GRACE_MS),
        DRIFTLOOP_LOG_LEVEL="info",
    )
    joiner = WorkerProcess("joiner", env, tmp_path / "joiner.log")
    started.append(joiner)
    assert joiner.wait_for("joiner owns partitions [0, 1, 2]"), joiner.text()[-3000:]

    good = {"str-at-limit", "payload-at-limit", "normal"}
    orphan = _joined_on_partition_0(sandbox.topics.partitions)
    phase1: list[tuple[str, str, bytes, str | None]] = [  # topic, key, value, expected kind
        (inf, "str-at-limit", _log("str-at-limit", feature="s" * L.MAX_VALUE_CHARS), None),
        (
            inf,
            "str-huge",
            _log("str-huge").replace(b'"fr"', b'"' + b"s" * 1_500_000 + b'"'),
            "validation",
        ),
        (inf, "payload-at-limit", _log("payload-at-limit", pad_to=L.MAX_EVENT_BYTES), None),
        (inf, "payload-over", _log("payload-over", pad_to=L.MAX_EVENT_BYTES + 1), "too_large"),
        (inf, "payload-3mb", _log("payload-3mb", pad_to=3_000_000), "too_large"),
        (inf, "under-topic", _log("under-topic", pad_to=L.MAX_RECORD_VALUE_BYTES), "too_large"),
        (fb, "payload-3mb-fb", b"[" + b" " * 3_000_000 + b"]", "too_large"),
        # over max.message.bytes: Apache Kafka refuses it, Tansu (embedded) takes it
        (fb, "over-topic", b" " * (L.TOPIC_MAX_MESSAGE_BYTES + 4096), "too_large"),
        (fb, "str-at-limit", _foreign_feedback("str-at-limit"), None),
        (fb, "payload-at-limit", _foreign_feedback("payload-at-limit"), None),
        # late: both far more than window + grace behind their topics (which are at T0)
        (inf, "late", _log("late", ts=0), "late"),
        (fb, "late", _foreign_feedback("late", ts=WINDOW_MS + 5), "late"),
        # orphan: no inference ever comes; closed by the phase-2 pair
        (fb, orphan, _foreign_feedback(orphan), "orphan"),
    ]
    phase2 = [
        (inf, "normal", _log("normal", ts=10 * T0), None),
        (fb, "normal", _foreign_feedback("normal", ts=10 * T0 + 100), None),
    ]
    sent: dict[tuple[str, int], tuple[bytes, str | None]] = {}
    # records up to (and over) the topic's max.message.bytes need a producer that sends them
    producer = make_producer(sandbox.kafka, max_request_size=2 * L.TOPIC_MAX_MESSAGE_BYTES)
    for batch in (phase1, phase2):
        futures = [
            (producer.send(topic, key=key.encode(), value=value, partition=0), value, kind)
            for topic, key, value, kind in batch
        ]
        producer.flush()
        for future, value, kind in futures:
            try:
                meta = future.get(timeout=30)
            except KafkaError:  # the broker enforces max.message.bytes: nothing to read
                assert len(value) > L.MAX_RECORD_VALUE_BYTES
                continue
            sent[(meta.topic, meta.offset)] = (value, kind)
        ends = high_watermarks(sandbox.kafka, [inf, fb])
        targets: dict[str, dict[int, int]] = {}
        for tp, end in ends.items():
            targets.setdefault(tp.topic, {})[tp.partition] = end
        wait_committed(sandbox, group, targets, joiner, timeout_s=120)
    producer.close()

    expected = {where: kind for where, (_, kind) in sent.items() if kind is not None}
    # The inputs' commits do not cover everything: records whose join partition
    # is not 0 are forwarded through join-repartition, and the orphan's window
    # closes only when the other partitions' sources are released as idle.
    deadline = time.monotonic() + 120
    while True:
        written = sum(high_watermarks(sandbox.kafka, [sandbox.topics.dead_letters]).values())
        if written >= len(expected) or time.monotonic() > deadline:
            break
        assert joiner.alive(), joiner.text()[-3000:]
        time.sleep(0.5)
    assert written == len(expected)
    dead = read_topic(sandbox, sandbox.topics.dead_letters, len(expected))
    letters = [decode(DeadLetter, value) for value in dead]
    assert all(len(value) <= L.MAX_DEAD_LETTER_BYTES for value in dead)
    got = {(d.source_topic, d.source_offset): d.error_kind for d in letters}
    assert len(got) == len(letters), "one dead letter per record"
    assert got == expected
    for letter in letters:
        value, _ = sent[(letter.source_topic, letter.source_offset)]
        assert letter.value_size == len(value)
        assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
        assert letter.truncated == (len(value) > L.MAX_DEAD_LETTER_RAW_BYTES)
        if letter.truncated:
            assert value.startswith(letter.raw_value())
        else:
            assert letter.raw_value() == value, (letter.error_kind, letter.error)
    assert any(letter.truncated for letter in letters)  # the one just under the topic limit

    examples = [
        decode(TrainingExample, v) for v in read_topic(sandbox, sandbox.topics.training_examples, 3)
    ]
    assert {e.request_id for e in examples} == good

    text = joiner.text()
    assert joiner.alive(), text[-3000:]
    for crash in ("Crashed reason", "Restarting dead", "MessageSizeTooLarge", "Traceback"):
        assert crash not in text, text[-3000:]
    assert joiner.terminate() == 0
