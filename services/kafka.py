"""kafka-python clients built from :class:`~services.config.KafkaConfig`.

Every driftloop component that talks to Kafka outside faust gets its clients
here, so security options (SASL, SSL) and group timeouts are applied the same
way everywhere:

- :func:`make_producer`, :func:`make_consumer`, :func:`make_admin`;
- :func:`ensure_topics`: create topics idempotently and wait until usable;
- :func:`high_watermarks`: the true log-end offset of every partition.

Record sizes
------------
Producers accept, topics admit and consumers fetch records of up to
:data:`~schemas.limits.TOPIC_MAX_MESSAGE_BYTES` (the derivation is in
:mod:`schemas.limits`): :func:`make_producer` sets ``max_request_size``,
:func:`make_consumer` ``max_partition_fetch_bytes`` and :func:`ensure_topics`
creates topics with ``max.message.bytes`` (:func:`topic_configs`, which also
gives ``version-events`` unlimited retention); the
broker's own ``message.max.bytes`` must be as large for faust's changelog
topics (docker-compose.yml sets it).

The high watermark and the embedded broker
------------------------------------------
Tansu 0.6 answers ``ListOffsets(latest)`` (kafka-python ``end_offsets``,
aiokafka ``end_offsets``, faust highwaters) with the base offset of the last
record batch + 1, which is lower than the high watermark once a batch holds
more than one record. The high watermark carried in every *fetch* response is
right on Tansu and on Apache Kafka alike, so :func:`high_watermarks` reads it
from a fetch and never from ``end_offsets``. Code must not use ``end_offsets``
for correctness (lag, "caught up", counts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import kafka.errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from schemas import limits as L
from schemas.errors import BrokerError
from services.config import KafkaConfig, TopicsConfig


def make_producer(config: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer with the connection and security settings of ``config``.

    ``overrides`` are passed to ``KafkaProducer`` after them (``acks``,
    ``linger_ms``, serializers, ...). The defaults are ``acks="all"`` and a
    ``max_request_size`` of one record as large as driftloop's topics admit.
    """
    options: dict[str, Any] = (
        {"acks": "all", "max_request_size": L.PRODUCER_MAX_REQUEST_BYTES}
        | config.kafka_python_options()
        | overrides
    )
    return KafkaProducer(**options)


def make_consumer(
    config: KafkaConfig,
    *topics: str,
    group_id: str | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer subscribed to ``topics`` (none: assign partitions yourself).

    With a ``group_id`` the group timeouts of ``config`` apply (against the
    embedded broker they must be short: a group's first join waits for the
    rebalance timeout, which kafka-python takes from ``max_poll_interval_ms``).
    Offsets start at the earliest record unless ``auto_offset_reset`` is
    overridden; ``max_partition_fetch_bytes`` admits the largest record a
    driftloop topic admits, so no record leaves the consumer stuck.
    """
    options: dict[str, Any] = config.kafka_python_options() | {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": L.CONSUMER_MAX_PARTITION_FETCH_BYTES,
    }
    if group_id is not None:
        options |= config.consumer_group_options()
    else:
        options["enable_auto_commit"] = False
    return KafkaConsumer(*topics, **(options | overrides))


def make_admin(config: KafkaConfig, **overrides: Any) -> KafkaAdminClient:
    """An admin client with the connection and security settings of ``config``."""
    return KafkaAdminClient(**(config.kafka_python_options() | overrides))


def topic_configs(name: str | None = None, topics: TopicsConfig | None = None) -> dict[str, str]:
    """Topic-level configs the topic ``name`` is created with (None: any topic).

    ``max.message.bytes`` is :data:`~schemas.limits.TOPIC_MAX_MESSAGE_BYTES`:
    Apache Kafka's default (about 1 MiB) would refuse a valid 2 MiB event and
    the dead letter of a larger record. ``version-events`` (by the names of
    ``topics``, default ``TopicsConfig()``) keeps everything
    (``retention.ms`` and ``retention.bytes`` -1): it is the durable log the
    version pointers are restored from.
    """
    configs = {"max.message.bytes": str(L.TOPIC_MAX_MESSAGE_BYTES)}
    if (
        name is not None
        and name == (topics if topics is not None else TopicsConfig()).version_events
    ):
        configs |= {"retention.ms": "-1", "retention.bytes": "-1"}
    return configs


def ensure_topics(
    config: KafkaConfig,
    names: Iterable[str],
    topics: TopicsConfig | None = None,
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics in ``names`` that do not exist yet; wait until all are usable.

    Partition count and replication factor come from ``topics`` (default:
    ``TopicsConfig()``), topic configs from :func:`topic_configs` (``version-events``
    keeps everything). Existing
    topics are left as they are, whatever their partition count and configs
    (raise an older topic's ``max.message.bytes`` with ``kafka-configs.sh``).
    Safe to call concurrently from several processes.

    Returns
    -------
    list[str]
        The names this call created.

    Raises
    ------
    BrokerError
        The broker refused a topic (other than "already exists"), or the
        topics did not get a leader for every partition within ``timeout_s``.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    settings = topics if topics is not None else TopicsConfig()
    spec = {
        name: {
            "num_partitions": settings.partitions,
            "replication_factor": settings.replication_factor,
            "configs": topic_configs(name, settings),
        }
        for name in wanted
    }
    try:
        admin = make_admin(config)
    except kafka.errors.KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka: {exc}", bootstrap=config.bootstrap) from exc
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        missing = {name: options for name, options in spec.items() if name not in existing}
        if missing:
            response = admin.create_topics(
                missing, timeout_ms=int(timeout_s * 1000), raise_errors=False
            )
            for result in response["topics"]:
                error = kafka.errors.for_code(result["error_code"])
                if error is kafka.errors.NoError:
                    created.append(result["name"])
                elif error is not kafka.errors.TopicAlreadyExistsError:
                    raise BrokerError(
                        f"Kafka refused to create the topic: {error.__name__}"
                        f" {result.get('error_message') or ''}".rstrip(),
                        topic=result["name"],
                        bootstrap=config.bootstrap,
                    )
        admin.wait_for_topics(wanted, timeout_ms=int(timeout_s * 1000))
    except kafka.errors.KafkaTimeoutError as exc:
        raise BrokerError(
            f"topics not ready in time: {exc}", topics=wanted, bootstrap=config.bootstrap
        ) from exc
    finally:
        admin.close()
    return created


def high_watermarks(
    config: KafkaConfig,
    topics: Iterable[str],
    *,
    timeout_s: float = 30.0,
) -> dict[TopicPartition, int]:
    """The high watermark (offset of the next record) of every partition of ``topics``.

    Read from fetch responses, not from ``ListOffsets``: the consumer is
    assigned every partition, positioned at its earliest offset, and polls
    until each partition has answered one fetch (which returns at most about
    one batch per partition, plus the high watermark). Correct on Apache
    Kafka and on Tansu, whose ``end_offsets`` undercounts (module docstring).
    The sum of the values is the number of records ever written when nothing
    was deleted or compacted.

    Raises
    ------
    BrokerError
        A topic does not exist, or some partition did not answer a fetch
        within ``timeout_s``.
    """
    consumer = make_consumer(
        config,
        max_partition_fetch_bytes=1,  # the broker still returns the first batch (KIP-74)
        fetch_max_wait_ms=50,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        partitions: list[TopicPartition] = []
        for topic in dict.fromkeys(topics):
            ids = _partitions_for(consumer, topic, time.monotonic() + timeout_s)
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        if not partitions:
            return {}
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + timeout_s
        pending = set(partitions)
        while pending:
            consumer.poll(timeout_ms=100, max_records=1)
            pending = {tp for tp in pending if consumer.highwater(tp) is None}
            if pending and time.monotonic() > deadline:
                tp = min(pending)
                raise BrokerError(
                    "no fetch answer carrying the high watermark in time",
                    topic=tp.topic,
                    partition=tp.partition,
                    bootstrap=config.bootstrap,
                )
        return {tp: int(consumer.highwater(tp)) for tp in partitions}
    finally:
        consumer.close(autocommit=False)


def _partitions_for(consumer: KafkaConsumer, topic: str, deadline: float) -> set[int]:
    while True:
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return set(ids)
        if time.monotonic() > deadline:
            raise BrokerError("topic not found", topic=topic)
        time.sleep(0.1)
