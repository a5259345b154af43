"""faust's seek to committed offsets rewinds every input partition (streams.kafka_compat).

faust may fetch input records and drop them (while it recovers tables, on a
rebalance or a flow stop) and relies on seeking to the committed offsets at
the end of every rebalance to read them again. aiokafka seeks only
partitions committed above 0, so a partition with nothing committed stayed
past the dropped records: a restarted joiner skipped the start of its input.
Here the seek is called on a running worker after it has processed every
record, and each partition must be read again from where a new consumer of
the group would start.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from services.kafka import make_consumer, make_producer
from streams.app import make_app

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

PER_PARTITION = 5


def _produce(sandbox: Sandbox, topic: str) -> None:
    producer = make_producer(sandbox.kafka)
    for partition in range(3):
        for i in range(PER_PARTITION):
            producer.send(topic, value=f"{partition}-{i}".encode(), partition=partition)
    producer.flush()
    producer.close()


def _commit(sandbox: Sandbox, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for ``group`` as a consumer that is not in the group would."""
    consumer = make_consumer(sandbox.kafka, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        )
    finally:
        consumer.close(autocommit=False)


async def _until(condition: Any, timeout_s: float, seen: list[tuple[int, int]]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out; read (partition, offset): {sorted(seen)}"
        await asyncio.sleep(0.05)


async def test_seek_to_committed_rewinds_partitions_committed_at_0_or_not_at_all(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    topic = sandbox.topics.inference_logs
    app_id = f"rewind-{sandbox.name}"
    _produce(sandbox, topic)
    _commit(sandbox, app_id, topic, {1: 2, 2: 0})  # partition 0: nothing committed

    # Commits only at exit: the seek must rewind to the offsets committed above.
    app = make_app(
        app_id, sandbox.kafka, datadir=tmp_path, topics=sandbox.topics, broker_commit_interval=3600
    )
    seen: list[tuple[int, int]] = []

    @app.agent(app.topic(topic, value_serializer="raw"))
    async def record(stream: Any) -> None:
        async for event in stream.events():
            seen.append((event.message.partition, event.message.offset))

    first_pass = sorted(
        [(0, i) for i in range(PER_PARTITION)]
        + [(1, i) for i in range(2, PER_PARTITION)]
        + [(2, i) for i in range(PER_PARTITION)]
    )
    await app.start()
    try:
        await _until(lambda: set(seen) >= set(first_pass), timeout_s=60, seen=seen)
        assert set(seen) == set(first_pass)  # sets: a start-up rebalance may replay some
        seen.clear()
        await app.consumer.perform_seek()
        await _until(lambda: set(seen) >= set(first_pass), timeout_s=30, seen=seen)
        await asyncio.sleep(0.5)  # nothing before the committed offsets may follow
    finally:
        await app.stop()
    assert set(seen) == set(first_pass)
