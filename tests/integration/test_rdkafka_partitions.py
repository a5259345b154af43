"""The librdkafka sender on the real broker: records land where kafka-python puts them,
and records no broker took come back failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kafka.partitioner.default import murmur2

from services.config import KafkaConfig
from services.kafka import make_consumer
from services.publish.kafka import Record
from services.publish.rdkafka import RdKafkaSender
from services.stack.process import free_port

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


def test_with_failure_only_reports_records_a_broker_never_took_all_come_back_failed() -> None:
    """librdkafka reports failed records only: when nothing answers, every record must
    still come back failed from settle (purged at the deadline), never count as sent."""
    port = free_port()  # nothing listens there
    sender = RdKafkaSender(KafkaConfig(bootstrap=f"127.0.0.1:{port}", request_timeout_ms=1000))
    sent = [Record("t", f"req-{i}".encode(), b"{}") for i in range(25)]
    for record in sent:
        sender.send(record)
    total, failures = sender.settle(2.0)
    sender.close(0)
    assert total == len(sent)
    assert [r for r, _ in failures] == sent
    assert all(isinstance(cause, TimeoutError) for _, cause in failures)
