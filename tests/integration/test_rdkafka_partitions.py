"""The librdkafka sender on the real broker: records land where kafka-python puts them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kafka.partitioner.default import murmur2

from services.kafka import make_consumer
from services.publish.kafka import Record
from services.publish.rdkafka import RdKafkaSender

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def test_keyed_records_land_on_the_partition_kafka_python_picks(sandbox: Sandbox) -> None:
    topic = sandbox.topics.inference_logs
    sent = [Record(topic, f"req-{i}".encode(), f'{{"n": {i}}}'.encode()) for i in range(40)]
    sender = RdKafkaSender(sandbox.kafka)
    for record in sent:
        sender.send(record)
    total, failures = sender.settle(60.0)
    sender.close(5.0)
    assert (total, failures) == (len(sent), [])

    consumer = make_consumer(sandbox.kafka, topic, consumer_timeout_ms=20_000)
    got = {}
    for msg in consumer:
        got[msg.key] = (msg.partition, msg.value)
        if len(got) == len(sent):
            break
    consumer.close()
    n = sandbox.topics.partitions  # kafka-python's DefaultPartitioner, as Java's
    expected = {r.key: ((murmur2(r.key) & 0x7FFFFFFF) % n, r.value) for r in sent}
    assert got == expected
