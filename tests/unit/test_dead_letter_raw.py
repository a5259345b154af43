"""Every dead letter the joiner writes carries the bytes that were sent.

Guards issue 9, item 4: for ``late``, ``orphan`` and wrong-model refusals the
dead letter held a re-encoded event with the defaults filled in (155 bytes
where 124 were sent), not the record's value, so it could not be replayed
byte for byte. The records here are valid events written the way another
producer might write them (spaces, other key order, defaults left out): their
bytes differ from driftloop's own encoding. The streams joiner's record
handling runs on the in-memory store, without Kafka.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import decode, encode
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog
from schemas.limits import MAX_PENDING_RAW_BYTES
from services.attribution import InMemoryPendingStore, JoinerConfig
from services.config import KafkaConfig, TopicsConfig
from services.deadletters import RawRecord
from streams.app import make_app
from streams.joiner import JoinerWorker
from tests.unit.joiner_sends import wire

MIN = 60_000
TOPICS = TopicsConfig(partitions=1)  # every request's join partition is 0: nothing forwarded


def _foreign(fields: dict[str, Any], pad: int = 0) -> bytes:
    """``fields`` as JSON with spaces and keys reversed, padded with ``pad`` spaces."""
    text = json.dumps(dict(reversed(list(fields.items()))), indent=1)
    return (text + " " * pad).encode()


def log_bytes(rid: str, ts: int) -> bytes:
    return _foreign(
        {
            "schema_version": 1,
            "event_id": f"inf-{rid}",
            "ts": ts,
            "request_id": rid,
            "model": "ctr",
            "model_version": "v1",
            "features": {"x": 1.5},
            "prediction": 0.25,
        }
    )


def feedback_bytes(rid: str, ts: int, *, model: str = "ctr", pad: int = 0) -> bytes:
    return _foreign(
        {
            "schema_version": 1,
            "event_id": f"fb-{rid}",
            "ts": ts,
            "request_id": rid,
            "model": model,
            "label": 1,
        },
        pad,
    )


@pytest.fixture
def worker(tmp_path: Path) -> JoinerWorker:
    app = make_app("raw-test", KafkaConfig(bootstrap="localhost:1"), datadir=tmp_path)
    worker = JoinerWorker(app, TOPICS, JoinerConfig(window_ms=10 * MIN, grace_ms=MIN))
    worker.joiner.store = InMemoryPendingStore()
    return worker


def test_every_dead_letter_keeps_the_bytes_sent(worker: JoinerWorker) -> None:
    offsets = itertools.count()
    sent: dict[tuple[str, int], bytes] = {}
    letters: list[DeadLetter] = []

    def feed(topic: str, value: bytes) -> None:
        offset = next(offsets)
        sent[(topic, offset)] = value
        record = RawRecord(topic=topic, partition=0, offset=offset, key=b"k", value=value)
        for kind, _key, data, _partition, _headers in wire(worker.handle(record)):
            if kind == "dead_letters":
                letters.append(decode(DeadLetter, data))

    logs, fb = TOPICS.inference_logs, TOPICS.feedback
    assert encode(decode(FeedbackEvent, feedback_bytes("a", 0))) != feedback_bytes("a", 0)
    assert encode(decode(InferenceLog, log_bytes("a", 0))) != log_bytes("a", 0)
    # an orphan: its inference never comes; padded beyond what the state keeps raw
    big = feedback_bytes("orphan-big", 0, pad=3 * MAX_PENDING_RAW_BYTES)
    feed(fb, feedback_bytes("orphan", 0))
    feed(fb, big)
    # feedback first, then an inference it is too late for / of another model
    feed(fb, feedback_bytes("too-late", 11 * MIN))
    feed(fb, feedback_bytes("other-model", MIN, model="other"))
    feed(logs, log_bytes("too-late", 0))
    feed(logs, log_bytes("other-model", 0))
    # both inputs move on in event time, past 2 windows + grace: the orphans' waits end
    feed(logs, log_bytes("later", 25 * MIN))
    feed(fb, feedback_bytes("later", 25 * MIN))
    # an inference log more than window + grace behind its topic: late on arrival
    feed(logs, log_bytes("stale", 0))

    by_kind = sorted((letter.error_kind, letter.error) for letter in letters)
    assert [kind for kind, _ in by_kind] == ["late", "late", "orphan", "orphan", "validation"]
    for letter in letters:
        original = sent[(letter.source_topic, letter.source_offset)]
        assert letter.value_size == len(original)
        assert letter.value_sha256 == hashlib.sha256(original).hexdigest()
        if original is big:
            assert letter.truncated
            assert original.startswith(letter.raw_value())
        else:
            assert letter.raw_value() == original, letter.error
            assert not letter.truncated


def test_canonical_records_are_not_stored_twice(worker: JoinerWorker) -> None:
    """A record already in driftloop's own encoding keeps no raw copy in the join state."""
    event = decode(FeedbackEvent, feedback_bytes("r", 0))
    record = RawRecord(TOPICS.feedback, 0, 0, b"r", encode(event))
    assert wire(worker.handle(record)) == []
    store = worker.joiner.store
    assert isinstance(store, InMemoryPendingStore)
    assert b'"raw"' not in store.data["r"]
