"""kafka-python clients from services.kafka against the real broker, and the Tansu workarounds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kafka import TopicPartition

from services.kafka import ensure_topics, high_watermarks, make_admin, make_consumer, make_producer
from services.stack import EMBEDDED_GROUP_TIMEOUTS

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

# A generous wait, not a timing assertion: with the default 300 s rebalance
# timeout Tansu would hold the first join far longer than this.
JOIN_DEADLINE_MS = 60_000


def test_producer_and_consumer_group_round_trip(sandbox: Sandbox) -> None:
    topic = sandbox.topics.feedback
    producer = make_producer(sandbox.kafka)
    sent = {f"req-{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(30)}
    for key, value in sent.items():
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = make_consumer(
        sandbox.kafka, topic, group_id=sandbox.group_id, consumer_timeout_ms=JOIN_DEADLINE_MS
    )
    received: dict[bytes, bytes] = {}
    for record in consumer:
        received[record.key] = record.value
        if len(received) == len(sent):
            break
    consumer.commit()
    consumer.close()
    assert received == sent

    # The committed offsets are the group's: a new member of the group sees nothing new.
    again = make_consumer(
        sandbox.kafka, topic, group_id=sandbox.group_id, consumer_timeout_ms=2_000
    )
    partitions = [TopicPartition(topic, p) for p in range(sandbox.topics.partitions)]
    committed = sum(again.committed(tp) or 0 for tp in partitions)
    again.close()
    assert committed == len(sent)


def test_first_group_join_completes_with_the_fixtures_short_rebalance_timeout(
    sandbox: Sandbox,
) -> None:
    # The fixtures' configs carry the workaround: a short max_poll_interval_ms
    # (kafka-python's rebalance timeout) and matching session/heartbeat.
    assert sandbox.kafka.max_poll_interval_ms == EMBEDDED_GROUP_TIMEOUTS.max_poll_interval_ms
    assert sandbox.kafka.max_poll_interval_ms <= 10_000
    assert sandbox.kafka.heartbeat_interval_ms < sandbox.kafka.session_timeout_ms
    options = sandbox.kafka.consumer_group_options()
    assert options["max_poll_interval_ms"] == sandbox.kafka.max_poll_interval_ms

    topic = sandbox.topics.inference_logs
    producer = make_producer(sandbox.kafka)
    producer.send(topic, key=b"k", value=b"first").get(timeout=30)
    producer.close()
    consumer = make_consumer(
        sandbox.kafka, topic, group_id=sandbox.group_id, consumer_timeout_ms=JOIN_DEADLINE_MS
    )
    first = next(iter(consumer), None)
    assignment = consumer.assignment()
    consumer.close()
    assert first is not None, "the first group join did not complete"
    assert first.value == b"first"
    assert {tp.partition for tp in assignment} == set(range(sandbox.topics.partitions))


def test_high_watermarks_count_every_record_even_where_end_offsets_does_not(
    sandbox: Sandbox,
) -> None:
    topic = sandbox.topic("counts", partitions=3)
    producer = make_producer(sandbox.kafka, linger_ms=50)
    expected = {0: 0, 1: 0, 2: 0}
    # Several multi-record batches into partition 0 (Tansu's end_offsets then
    # reports the last batch's base offset + 1), single sends to the others.
    for batch in range(3):
        for i in range(10):
            producer.send(topic, value=f"{batch}-{i}".encode(), partition=0)
        producer.flush()
        expected[0] += 10
    for i in range(5):
        producer.send(topic, value=b"one", partition=1 + i % 2).get(timeout=30)
        expected[1 + i % 2] += 1
    producer.close()

    marks = high_watermarks(sandbox.kafka, [topic])

    assert {tp.partition: hw for tp, hw in marks.items()} == expected
    # end_offsets may undercount (Tansu) or agree (Apache Kafka); it never
    # says more than the truth, and the helper never says less.
    consumer = make_consumer(sandbox.kafka)
    ends = consumer.end_offsets(list(marks))
    consumer.close()
    assert all(ends[tp] <= marks[tp] for tp in marks)


def test_high_watermarks_of_empty_partitions_are_zero(sandbox: Sandbox) -> None:
    marks = high_watermarks(sandbox.kafka, [sandbox.topics.dead_letters])
    assert sorted(marks.values()) == [0] * sandbox.topics.partitions


def test_ensure_topics_is_idempotent_and_reports_only_what_it_created(sandbox: Sandbox) -> None:
    fresh = sandbox.topics.prefix + "fresh"
    assert ensure_topics(sandbox.kafka, [sandbox.topics.feedback, fresh], sandbox.topics) == [fresh]
    assert ensure_topics(sandbox.kafka, [sandbox.topics.feedback, fresh], sandbox.topics) == []
    admin = make_admin(sandbox.kafka)
    described = {t["name"]: t for t in admin.describe_topics([fresh])}
    admin.close()
    assert len(described[fresh]["partitions"]) == sandbox.topics.partitions
