"""kill -9 the joiner while most records go through the repartition topic.

The input of ``test_joiner_kills`` (out-of-order, repeated, superseded and
orphan feedback, repeated logs, junk), produced with librdkafka's default
placement of a key, ``crc32(key) % partitions``, instead of murmur2: about
two thirds of the records are read on another partition than their
request's join partition and forwarded. A ``driftloop worker --role joiner``
is killed with SIGKILL at random moments (between a forward and its
commit, a replay forwards again) and restarted in the same group. The
distinct examples written must be exactly those of a clean run: forwarded
repeats are duplicates by event_id, never a second example or a lost one.
"""

from __future__ import annotations

import random
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode
from schemas.events import TrainingExample
from services.attribution import join_partition
from services.kafka import high_watermarks, make_producer
from tests.integration._join_input import InputShape, Record, skipped_records_explain
from tests.integration._join_input import make_records as make_join_input
from tests.integration._procs import WorkerProcess, read_topic, wait_committed, worker_env
from tests.integration.test_joiner_kills import clean_pairs, clean_run

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

SHAPE = InputShape(model="jkr", requests=240)


def _crc32_partition(key: str, partitions: int) -> int:
    """librdkafka's ``consistent`` placement of a key (its default for keyed records)."""
    return zlib.crc32(key.encode()) % partitions


def _produce(sandbox: Sandbox, topic: str, records: list[Record]) -> None:
    producer = make_producer(sandbox.kafka, linger_ms=5)
    parts = sandbox.topics.partitions
    for r in records:
        producer.send(
            topic, key=r.key.encode(), value=r.value, partition=_crc32_partition(r.key, parts)
        )
    producer.flush()
    producer.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_kill_9_while_forwarding_loses_and_doubles_no_example(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    rng = random.Random(2026_12_02)
    records = make_join_input(SHAPE, rng)
    parts = sandbox.topics.partitions
    expected = clean_run(records, parts)
    assert len(expected) == SHAPE.requests - SHAPE.requests // 10
    misplaced = sum(_crc32_partition(r.key, parts) != join_partition(r.key, parts) for r in records)
    assert misplaced > len(records) // 2

    topic_of = {"inference": sandbox.topics.inference_logs, "feedback": sandbox.topics.feedback}
    group = f"joiner-{sandbox.name}"
    slices, min_kills = 6, 6
    cut = [len(records) * i // slices for i in range(slices + 1)]
    produced = kills = 0
    while produced < slices or kills < min_kills:
        env = worker_env(
            sandbox,
            app_id=group,
            commit_interval_s=0.3,
            DRIFTLOOP_WORKER_DATADIR=str(tmp_path / f"joiner-data-{kills}"),
        )
        joiner = WorkerProcess("joiner", env, tmp_path / "joiner.log")
        started.append(joiner)
        if rng.random() < 0.25:  # during start-up, group join or table recovery
            time.sleep(rng.uniform(0.5, 4.0))
        else:
            assert joiner.wait_for("joiner owns partitions [0, 1, 2]"), joiner.text()[-3000:]
            if produced < slices:
                part = records[cut[produced] : cut[produced + 1]]
                for kind in ("inference", "feedback"):
                    _produce(sandbox, topic_of[kind], [r for r in part if r.kind == kind])
                produced += 1
            time.sleep(rng.uniform(0.0, 1.5))
        joiner.kill()
        kills += 1

    last = WorkerProcess(
        "joiner",
        worker_env(sandbox, app_id=group, DRIFTLOOP_WORKER_DATADIR=str(tmp_path / "last")),
        tmp_path / "joiner.log",
    )
    started.append(last)
    inputs = high_watermarks(sandbox.kafka, topic_of.values())
    targets: dict[str, dict[int, int]] = {}
    for tp, end in inputs.items():
        targets.setdefault(tp.topic, {})[tp.partition] = end
    wait_committed(sandbox, group, targets, last, timeout_s=120)
    # every forward is in the repartition topic now; wait until it is handled
    forwarded: dict[str, dict[int, int]] = {sandbox.topics.join_repartition: {}}
    for tp, end in high_watermarks(sandbox.kafka, [sandbox.topics.join_repartition]).items():
        forwarded[tp.topic][tp.partition] = end
    wait_committed(sandbox, group, forwarded, last, timeout_s=120)

    out = sandbox.topics.training_examples
    count = sum(high_watermarks(sandbox.kafka, [out]).values())
    examples = [decode(TrainingExample, v) for v in read_topic(sandbox, out, count)]
    emitted = [e.example_id for e in examples]
    extra = sorted(
        (e.request_id, e.feedback_event_id) for e in examples if e.example_id not in expected
    )
    lost = sorted(pair for pair in clean_pairs(records, expected) if pair[2] not in set(emitted))
    print(
        f"kills={kills} inputs={len(records)} misplaced={misplaced} examples={len(expected)}"
        f" emitted={len(emitted)} distinct={len(set(emitted))} lost={len(lost)}"
        f" extra={len(extra)}"
    )
    if lost or extra:
        report = f"lost {lost}, emitted instead {extra}"
        if skipped_records_explain(lost, extra):  # the known open defect of issue 9
            pytest.xfail(report)
        pytest.fail(report)
    assert set(emitted) == expected
    assert last.alive()
