"""faust table recovery from a changelog, on the real broker (streams.kafka_compat).

Tansu's ``ListOffsets(latest)`` answers the base offset of a partition's last
record batch + 1. faust recovers a table until that offset, so a changelog
whose last batch holds several records was restored only up to the batch's
first record. These tests write such a changelog and check that a worker
built with ``make_app`` restores all of it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faust.types import TP

from services.kafka import ensure_topics, make_producer
from streams.app import make_app

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def _write_one_batch(sandbox: Sandbox, topic: str, partition: int, count: int) -> None:
    """``count`` records into one partition, sent together so they share a batch."""
    producer = make_producer(sandbox.kafka, linger_ms=200, batch_size=1 << 20)
    for i in range(count):
        producer.send(
            topic, key=f"k{i:03d}".encode(), value=f'"v{i}"'.encode(), partition=partition
        )
    producer.flush()
    producer.close()


async def test_a_table_recovers_every_record_of_a_multi_record_changelog_batch(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app_id = f"recovery-{sandbox.name}"
    changelog = f"{app_id}-state-changelog"
    ensure_topics(sandbox.kafka, [changelog], sandbox.topics)
    count = 25
    _write_one_batch(sandbox, changelog, 0, count)
    _write_one_batch(sandbox, changelog, 2, 3)

    app = make_app(app_id, sandbox.kafka, datadir=tmp_path, topics=sandbox.topics)
    table = app.Table(
        "state",
        key_type=bytes,  # app default key serializer: raw
        value_type=str,  # app default value serializer: json
        partitions=sandbox.topics.partitions,
    )
    source = app.topic(sandbox.topics.inference_logs, value_serializer="raw")
    recovered = asyncio.Event()

    @app.agent(source)
    async def idle(stream: Any) -> None:  # gives the table's partitions an owner
        async for _ in stream:
            pass

    @app.on_rebalance_complete.connect
    async def on_recovered(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if app.assignor.assigned_actives():
            recovered.set()

    await app.start()
    try:
        await asyncio.wait_for(recovered.wait(), timeout=60)
        keys = sorted(table.keys())
        highwaters = await app.consumer.highwaters(TP(changelog, 0), TP(changelog, 2))
    finally:
        await app.stop()

    expected = sorted({f"k{i:03d}".encode() for i in range(count)} | {b"k000", b"k001", b"k002"})
    assert keys == expected, f"restored {len(keys)} of {len(expected)} keys"
    assert highwaters == {TP(changelog, 0): count, TP(changelog, 2): 3}
