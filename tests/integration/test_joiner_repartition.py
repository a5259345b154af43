"""Any producer's partitioner works: two joiner workers, records on random partitions.

Guards issue 9 item 2 with two real ``driftloop worker --role joiner``
processes on the real broker. The producer puts every record on a random
partition (as a producer with another partitioner than Java's murmur2, or
with no key, may), and keys a third of them by request_id, a third by
another string and a third not at all. A request's log and feedback then
mostly sit on different partitions, often owned by different workers:
before the repartition topic those pairs never met (nothing ever closed their
windows either, so they were not even dead-lettered). Every pair must be
joined exactly once across both workers, and nothing dead-lettered.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode, encode
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog, TrainingExample
from services.attribution import Forward, join_partition
from services.attribution.routing import parse_route
from services.kafka import high_watermarks, make_admin, make_consumer, make_producer
from tests.integration._procs import WorkerProcess, read_topic, wait_committed, worker_env

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

T0 = 1_700_000_000_000
PAIRS = 120
REQUESTS = 600  # the paused backlog: one log every 3 s, feedback for every other
SPACING_MS = 3_000


@pytest.fixture
def started() -> Iterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        if proc.alive():
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.kill()


def _two_workers(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess], **extra: str
) -> str:
    group = f"joiner-{sandbox.name}"
    for i in range(2):
        env = worker_env(
            sandbox,
            app_id=group,
            DRIFTLOOP_WORKER_DATADIR=str(tmp_path / f"datadir{i}"),
            DRIFTLOOP_LOG_LEVEL="info",
            **extra,
        )
        started.append(WorkerProcess("joiner", env, tmp_path / f"joiner{i}.log"))
    _wait_split(started)
    return group


def _owned(proc: WorkerProcess) -> set[int] | None:
    found = re.findall(r"joiner owns partitions \[([0-9, ]*)\]", proc.text())
    if not found:
        return None
    return {int(p) for p in found[-1].split(",") if p.strip()}


def _wait_split(procs: list[WorkerProcess], timeout_s: float = 120.0) -> None:
    """Until each worker's latest assignment is non-empty and together they own all three."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        owned = [_owned(proc) for proc in procs]
        sizes = sum(len(o) for o in owned if o)
        if all(owned) and set().union(*(o for o in owned if o)) == {0, 1, 2} and sizes == 3:
            return
        for proc in procs:
            assert proc.alive(), proc.text()[-3000:]
        time.sleep(0.3)
    raise AssertionError("the two joiners did not split the partitions: " + repr(owned))


def _produce_randomly(
    sandbox: Sandbox, topic: str, records: list[tuple[str, bytes]], rng: random.Random
) -> set[tuple[str, int, int]]:
    """Each value on a random partition, keyed by its request id, another
    string, or nothing; returns where those not on their join partition are."""
    producer = make_producer(sandbox.kafka, linger_ms=5)
    sent = []
    for i, (request_id, value) in enumerate(records):
        key = [request_id.encode(), f"wrong-{i}".encode(), None][i % 3]
        partition = rng.randrange(3)
        sent.append((producer.send(topic, key=key, value=value, partition=partition), request_id))
    producer.flush()
    producer.close()
    misplaced = set()
    for future, request_id in sent:
        meta = future.get(timeout=30)
        if meta.partition != join_partition(request_id, 3):
            misplaced.add((topic, meta.partition, meta.offset))
    return misplaced


def _forwarded(sandbox: Sandbox) -> set[tuple[str, int, int]]:
    """The source of every record forwarded through the repartition topic."""
    topic = sandbox.topics.join_repartition
    end = sum(high_watermarks(sandbox.kafka, [topic]).values())
    consumer = make_consumer(sandbox.kafka, topic)
    found: set[tuple[str, int, int]] = set()
    read = 0
    deadline = time.monotonic() + 60
    try:
        while read < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                for record in batch:
                    read += 1
                    route = parse_route(record.headers, record.partition)
                    if isinstance(route, Forward):
                        found.add((route.source.topic, route.source.partition, route.source.offset))
    finally:
        consumer.close(autocommit=False)
    assert read >= end, f"read {read} of {end} repartition records"
    return found


def _wait_processed(sandbox: Sandbox, group: str, procs: list[WorkerProcess]) -> None:
    """Until the group committed every input record and then every record
    on the other topics it reads (the repartition topic), as far as they
    reached once the inputs were committed. Committed means flushed: the
    outputs of those records are in Kafka."""
    inputs = [sandbox.topics.inference_logs, sandbox.topics.feedback]
    targets: dict[str, dict[int, int]] = {topic: {} for topic in inputs}
    for tp, end in high_watermarks(sandbox.kafka, inputs).items():
        targets[tp.topic][tp.partition] = end
    wait_committed(sandbox, group, targets, procs[0], timeout_s=180)
    admin = make_admin(sandbox.kafka)
    try:
        read = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    others = sorted({tp.topic for tp in read} - set(inputs))
    more: dict[str, dict[int, int]] = {topic: {} for topic in others}
    for tp, end in high_watermarks(sandbox.kafka, others).items():
        more[tp.topic][tp.partition] = end
    if more:
        wait_committed(sandbox, group, more, procs[1], timeout_s=180)


def _outputs(sandbox: Sandbox) -> tuple[list[TrainingExample], list[DeadLetter]]:
    examples_topic, letters_topic = sandbox.topics.training_examples, sandbox.topics.dead_letters
    ends = high_watermarks(sandbox.kafka, [examples_topic, letters_topic])
    count = {
        topic: sum(end for tp, end in ends.items() if tp.topic == topic)
        for topic in (examples_topic, letters_topic)
    }
    examples = [
        decode(TrainingExample, v)
        for v in read_topic(sandbox, examples_topic, count[examples_topic])
    ]
    letters = [
        decode(DeadLetter, v) for v in read_topic(sandbox, letters_topic, count[letters_topic])
    ]
    return examples, letters


def _report(
    label: str, expected: int, examples: list[TrainingExample], letters: list[DeadLetter]
) -> None:
    joined = {e.request_id for e in examples}
    print(
        f"{label}: {len(joined)} of {expected} pairs joined, {expected - len(joined)} lost, "
        f"{len(examples) - len(joined)} doubled, {len(letters)} dead letters "
        f"{sorted({d.error_kind for d in letters})}"
    )


def test_records_on_random_partitions_join_across_two_workers(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    group = _two_workers(sandbox, tmp_path, started)
    rng = random.Random(20261202)
    logs, feedback = [], []
    for i in range(PAIRS):
        log = InferenceLog.new(
            event_id=f"inf-{i}", request_id=f"req-{i}", model="rp", model_version="v1",
            ts=T0 + i * 100, features={"x": float(i)}, prediction=0.5,
        )  # fmt: skip
        fb = FeedbackEvent.new(
            event_id=f"fb-{i}", request_id=f"req-{i}", model="rp", ts=T0 + i * 100 + 50,
            label=i % 2 == 0,
        )  # fmt: skip
        logs.append((log.request_id, encode(log)))
        feedback.append((fb.request_id, encode(fb)))
    misplaced = _produce_randomly(sandbox, sandbox.topics.inference_logs, logs, rng)
    misplaced |= _produce_randomly(sandbox, sandbox.topics.feedback, feedback, rng)
    _wait_processed(sandbox, group, started)

    examples, letters = _outputs(sandbox)
    _report("random partitioner, two workers", PAIRS, examples, letters)
    print(f"{len(misplaced)} of {2 * PAIRS} records off their join partition")
    assert len(misplaced) > PAIRS  # about two thirds: the test is about them
    assert _forwarded(sandbox) == misplaced  # every misplaced record forwarded, nothing else
    assert [(d.source_topic, d.error_kind, d.error) for d in letters] == []
    joined = sorted(int(e.request_id.removeprefix("req-")) for e in examples)
    assert joined == list(range(PAIRS)), (
        f"{PAIRS - len(set(joined))} pairs lost, {len(joined) - len(set(joined))} doubled"
    )
    assert all(e.label == (int(e.request_id[4:]) % 2 == 0) for e in examples)
    assert all(proc.alive() for proc in started)


def test_a_paused_backlog_on_random_partitions_loses_no_pair_across_two_workers(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    """The sparse/dense backlog of ``test_joiner_watermarks`` (600 logs over 30
    minutes of event time, feedback for every other one 2 s later, produced
    while the workers are stopped, every log before any feedback), on random
    partitions and two workers: windows may close only once every topic
    partition that can still deliver to them, through the repartition topic
    too, has passed them."""
    group = _two_workers(sandbox, tmp_path, started)
    rng = random.Random(9)
    logs, feedback = [], []
    for i in range(REQUESTS):
        log = InferenceLog.new(
            event_id=f"inf-{i}", request_id=f"req-{i}", model="wm", model_version="v1",
            ts=T0 + i * SPACING_MS, features={"x": float(i)}, prediction=0.5,
        )  # fmt: skip
        logs.append((log.request_id, encode(log)))
        if i % 2 == 0:
            fb = FeedbackEvent.new(
                event_id=f"fb-{i}", request_id=f"req-{i}", model="wm",
                ts=T0 + i * SPACING_MS + 2_000, label=i % 3 == 0,
            )  # fmt: skip
            feedback.append((fb.request_id, encode(fb)))
    for proc in started:
        os.kill(proc.proc.pid, signal.SIGSTOP)
    try:
        _produce_randomly(sandbox, sandbox.topics.inference_logs, logs, rng)
        _produce_randomly(sandbox, sandbox.topics.feedback, feedback, rng)
    finally:
        for proc in started:
            os.kill(proc.proc.pid, signal.SIGCONT)
    _wait_processed(sandbox, group, started)

    examples, letters = _outputs(sandbox)
    _report("paused backlog, random partitioner, two workers", REQUESTS // 2, examples, letters)
    assert [(d.source_topic, d.error_kind, d.error) for d in letters] == []
    joined = sorted(int(e.request_id.removeprefix("req-")) for e in examples)
    assert joined == list(range(0, REQUESTS, 2)), (
        f"{REQUESTS // 2 - len(set(joined))} pairs lost, {len(joined) - len(set(joined))} doubled"
    )
    assert all(e.ts == e.feedback_ts for e in examples)
    assert all(proc.alive() for proc in started)
