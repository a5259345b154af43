"""The trainer agent on the real broker: in-process, and ``driftloop worker --role all``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode, encode
from schemas.events import CheckpointEvent, DeadLetter, FeedbackEvent, InferenceLog
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.kafka import make_consumer, make_producer
from services.learning.config import parse_config
from services.learning.pool import TrainerPool
from streams.app import make_app
from streams.trainer import TrainerAgent
from tests.integration.test_exactly_once import make_examples

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "tr-logreg"


def model_config(name: str = MODEL, every_n: int = 40) -> str:
    return f"""
[[model]]
name = "{name}"
kind = "river"
task = "classification"
batch_size = 10
factory = {{ path = "river.linear_model.LogisticRegression" }}
[model.triggers]
every_n = {every_n}
on_drift = false
# no holdout: these tests (and those borrowing this config) count what is learned
[model.promotion]
holdout_percent = 0
"""


def read_until(
    sandbox: Sandbox, topic: str, done: Callable[[list[bytes]], bool], timeout_s: float = 90.0
) -> list[bytes]:
    consumer = make_consumer(sandbox.kafka, topic)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(values):
        for batch in consumer.poll(timeout_ms=300).values():
            values.extend(r.value for r in batch)
    consumer.close()
    return values


def send(sandbox: Sandbox, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(sandbox.kafka)
    for key, value in pairs:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def events(values: list[bytes]) -> list[CheckpointEvent]:
    return [decode(CheckpointEvent, v) for v in values]


async def run_agent(
    sandbox: Sandbox,
    tmp_path: Path,
    until: Callable[[TrainerPool], bool],
    *,
    partitions: int | None = None,
) -> TrainerPool:
    """Run a trainer agent until ``until(pool)``; ``partitions`` is the partition
    count the pool is *configured* with (default: the topic's real one)."""
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    learning = parse_config(tomllib.loads(model_config()))
    pool = TrainerPool(
        learning.models,
        store,
        topic=sandbox.topics.training_examples,
        partitions=partitions or sandbox.topics.partitions,
    )
    app = make_app(f"trainer-{sandbox.name}", sandbox.kafka, datadir=tmp_path / "faust")
    TrainerAgent(app, sandbox.topics, pool, chunk=50)
    await app.start()
    try:
        deadline = time.monotonic() + 60
        while not until(pool) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await app.stop()  # takes the shutdown checkpoint
        store.close()
    return pool


async def test_models_are_placed_by_the_topics_real_partition_count(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # The topic has 3 partitions; the setting says 7: tr-logreg's examples are on
    # partition 0 (murmur2 % 3), where the setting would look for them on partition 5.
    topic = sandbox.topics.training_examples
    examples = make_examples(MODEL, 40)
    send(sandbox, topic, [(MODEL.encode(), encode(e)) for e in examples])
    pool = await run_agent(sandbox, tmp_path, lambda p: p.stats.trained >= 40, partitions=7)
    assert pool.partitions == sandbox.topics.partitions
    assert (pool.stats.trained, pool.stats.dead_letters) == (40, 0)
    (event,) = events(
        read_until(sandbox, sandbox.topics.checkpoint_events, lambda v: len(v) >= 1, 30)
    )
    assert (event.trigger, event.examples_seen) == ("count", 40)


async def test_events_follow_commits_bad_records_are_dead_lettered_and_a_restart_resumes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    topic = sandbox.topics.training_examples
    examples = make_examples(MODEL, 125)
    first = [encode(e) for e in examples[:85]]
    first.insert(20, b"\xff not json")
    send(sandbox, topic, [(MODEL.encode(), v) for v in first])
    await run_agent(sandbox, tmp_path, lambda pool: pool.stats.records >= len(first))

    send(sandbox, topic, [(MODEL.encode(), encode(e)) for e in examples[85:]])
    await run_agent(sandbox, tmp_path, lambda pool: pool.stats.records >= 40)

    published = events(
        read_until(
            sandbox,
            sandbox.topics.checkpoint_events,
            lambda v: any(e.examples_seen == 120 for e in events(v)),
        )
    )
    # First run: counts at 40 and 80; its stop has only an open batch (5 examples) unsaved,
    # so no shutdown checkpoint. The restart republishes 80's event, counts at 120, and
    # again stops with only an open batch unsaved.
    seen = [(e.trigger, e.examples_seen) for e in published]
    assert seen == [("count", 40), ("count", 80), ("count", 80), ("count", 120)]
    assert published[1] == published[2]  # republished on restore: same event, same event_id
    assert len({e.event_id for e in published}) == len({e.version for e in published})
    for event in published:
        manifest = Path(event.location) / "manifest.json"
        assert hashlib.sha256(manifest.read_bytes()).hexdigest() == event.manifest_sha256
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    latest = store.latest(MODEL)
    assert latest is not None
    assert latest.examples_seen == 120  # nothing trained twice, nothing skipped
    store.close()
    letters = [
        decode(DeadLetter, v)
        for v in read_until(sandbox, sandbox.topics.dead_letters, lambda v: len(v) >= 1)
    ]
    assert [(d.source_offset, d.error_kind) for d in letters] == [(20, "decode")]


@pytest.mark.slow
def test_worker_role_all_turns_logs_and_feedback_into_checkpoints(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(model_config("ctr", every_n=20))
    pairs: list[tuple[str, bytes, bytes]] = []
    for i in range(40):
        rid = f"req-{i}"
        log = InferenceLog.new(
            request_id=rid,
            model="ctr",
            model_version="v0",
            ts=1_700_000_000_000 + i,
            features={"x": float(i % 5), "y": float(i % 3)},
            prediction=False,
        )
        feedback = FeedbackEvent.new(
            request_id=rid, model="ctr", ts=1_700_000_000_500 + i, label=i % 5 > 1
        )
        pairs.append((sandbox.topics.inference_logs, rid.encode(), encode(log)))
        pairs.append((sandbox.topics.feedback, rid.encode(), encode(feedback)))
    producer = make_producer(sandbox.kafka)
    for topic, key, value in pairs:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    env = dict(os.environ) | sandbox.stack.env()
    env |= {
        "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "DRIFTLOOP_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS": "1000",
        "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
        "DRIFTLOOP_TOPIC_PARTITIONS": str(sandbox.topics.partitions),
        "DRIFTLOOP_WORKER_APP_ID": f"all-{sandbox.name}",
    }
    argv = [sys.executable, "-c", "from services.cli import main; main()", "worker"]
    argv += ["--role", "all", "--config", str(config), "--store", str(tmp_path / "store")]
    with (tmp_path / "worker.log").open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            published = events(
                read_until(
                    sandbox,
                    sandbox.topics.checkpoint_events,
                    lambda v: any(e.examples_seen >= 40 for e in events(v)),
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert code == 0, log_text[-3000:]
    assert [(e.trigger, e.examples_seen) for e in published] == [("count", 20), ("count", 40)]
    assert "trainer stopped" in log_text
