"""A faust agent built with streams.app.make_app, run in-process against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.kafka import make_consumer, make_producer
from streams.app import make_app

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def _read(sandbox: Sandbox, topic: str, count: int) -> list[bytes]:
    consumer = make_consumer(sandbox.kafka, topic, consumer_timeout_ms=60_000)
    values: list[bytes] = []
    for record in consumer:
        values.append(record.value)
        if len(values) == count:
            break
    consumer.close()
    return values


async def test_faust_agent_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    source, sink = sandbox.topics.inference_logs, sandbox.topic("echoed")
    app = make_app(f"echo-{sandbox.name}", sandbox.kafka, datadir=tmp_path, topics=sandbox.topics)
    source_topic = app.topic(source, value_serializer="raw")
    sink_topic = app.topic(sink, value_serializer="raw")

    @app.agent(source_topic)
    async def shout(stream: Any) -> None:
        async for value in stream:
            await sink_topic.send(value=value.upper())

    await app.start()
    try:
        producer = make_producer(sandbox.kafka)
        for i in range(5):
            producer.send(source, value=f"event-{i}".encode())
        producer.flush()
        producer.close()
        echoed = await asyncio.to_thread(_read, sandbox, sink, 5)
    finally:
        await app.stop()

    assert sorted(echoed) == [f"EVENT-{i}".encode() for i in range(5)]
    # faust kept its state under the datadir we gave it, not in the cwd.
    assert not Path(f"echo-{sandbox.name}-data").exists()
