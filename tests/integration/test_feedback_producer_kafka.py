"""FeedbackProducer and KafkaPublisher against the real embedded broker."""

from __future__ import annotations

import pytest

from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.events import CheckpointEvent, FeedbackEvent
from services.config import KafkaConfig
from services.kafka import high_watermarks, make_consumer
from services.publish import PublishError
from services.publish.feedback import FeedbackProducer
from services.publish.kafka import KafkaPublisher
from services.stack.process import free_port
from tests.integration.conftest import Sandbox


def read_all(sandbox: Sandbox, topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of ``topic`` up to its high watermark (read from fetches)."""
    ends = high_watermarks(sandbox.kafka, [topic])
    consumer = make_consumer(sandbox.kafka)
    consumer.assign(list(ends))
    consumer.seek_to_beginning()
    out: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(600):
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
            for tp, batch in consumer.poll(timeout_ms=200).items():
                out += [(r.key, r.value) for r in batch if r.offset < ends[tp]]
        else:
            raise AssertionError(f"{topic} not read to its high watermark")
    finally:
        consumer.close(autocommit=False)
    return out


def feedback(i: int) -> dict[str, object]:
    return {
        "schema_version": 1,
        "event_id": f"fb-{i}",
        "request_id": f"r-{i}",
        "model": "ctr",
        "ts": 1_700_000_000_000 + i,
        "label": i % 2 == 0,
    }


def test_feedback_is_acknowledged_by_the_broker_and_invalid_feedback_never_sent(
    sandbox: Sandbox,
) -> None:
    with FeedbackProducer(sandbox.kafka, sandbox.topics) as producer:
        assert producer.send([feedback(i) for i in range(20)]) == [f"fb-{i}" for i in range(20)]
        with pytest.raises(SchemaError) as info:
            producer.send([feedback(20), {**feedback(21), "label": None}])
        assert info.value.context["index"] == 1
        producer.send(FeedbackEvent.model_validate(feedback(22)))
    records = read_all(sandbox, sandbox.topics.feedback)
    events = [decode(FeedbackEvent, value) for _, value in records]
    assert sorted(e.event_id for e in events) == sorted([f"fb-{i}" for i in range(20)] + ["fb-22"])
    assert all(key == e.request_id.encode() for (key, _), e in zip(records, events, strict=True))


def test_a_broker_that_is_not_there_is_a_publish_error_not_a_hang() -> None:
    nobody = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=2_000)
    with (
        FeedbackProducer(nobody, timeout_s=5) as producer,
        pytest.raises(PublishError, match="1 of 1 events not acknowledged"),
    ):
        producer.send(feedback(1))


def test_kafka_publisher_routes_each_type_and_flush_waits_for_the_acks(sandbox: Sandbox) -> None:
    publisher = KafkaPublisher(sandbox.kafka, sandbox.topics)
    try:
        event = CheckpointEvent.new(
            model="ctr",
            version="ctr-000001",
            step=1,
            examples_seen=8,
            trigger="count",
            location="file:///x",
            manifest_sha256="0" * 64,
        )
        publisher.publish(event)
        publisher.publish(FeedbackEvent.model_validate(feedback(1)))
        publisher.flush(30)
    finally:
        publisher.close()
    ((key, value),) = read_all(sandbox, sandbox.topics.checkpoint_events)
    assert key == b"ctr"
    assert decode(CheckpointEvent, value) == event
    assert [k for k, _ in read_all(sandbox, sandbox.topics.feedback)] == [b"r-1"]
