"""FaustPublisher on a running faust app against the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode
from schemas.events import CheckpointEvent, FeedbackEvent
from services.publish import PublishError
from services.publish.faust import FaustPublisher
from streams.app import make_app
from tests.integration.test_feedback_producer_kafka import feedback, read_all

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def checkpoint(i: int) -> CheckpointEvent:
    return CheckpointEvent.new(
        event_id=f"checkpoint:ctr-{i:06d}",
        model="ctr",
        version=f"ctr-{i:06d}",
        step=i,
        examples_seen=8 * i,
        trigger="count",
        location="file:///store",
        manifest_sha256="0" * 64,
    )


async def test_events_are_routed_sent_and_acknowledged(sandbox: Sandbox, tmp_path: Path) -> None:
    app = make_app(f"pub-{sandbox.name}", sandbox.kafka, datadir=tmp_path, topics=sandbox.topics)
    publisher = FaustPublisher(app, sandbox.topics)
    await app.start()
    try:
        for i in range(5):
            await publisher.send(checkpoint(i))
        publisher.publish(FeedbackEvent.model_validate(feedback(1)))  # sync, via faust's buffer
        await publisher.aflush(timeout_s=60)
        with pytest.raises(PublishError, match="await aflush"):
            publisher.flush()  # on the event loop: refused, not a deadlock
        publisher.publish(FeedbackEvent.model_validate(feedback(2)))
        await asyncio.to_thread(publisher.flush, 60)  # from another thread: waits
    finally:
        await app.stop()
    records = read_all(sandbox, sandbox.topics.checkpoint_events)
    assert {k for k, _ in records} == {b"ctr"}
    assert sorted(decode(CheckpointEvent, v).step for _, v in records) == list(range(5))
    keys = sorted(k for k, _ in read_all(sandbox, sandbox.topics.feedback))
    assert keys == [b"r-1", b"r-2"]
