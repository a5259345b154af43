"""A committed offset past what the join table accounts for is read again from the table's.

The kill -9 loss of issue 9 left the joiner's consumer group committed past
input records the join never handled. Here that state is made on purpose, on
the real broker: the group's offsets are committed at the end of both input
topics before any joiner of the group ran, so its table accounts for none of
their records. The joiner must find its table behind every committed offset,
log each rewind with both offsets, read the records from the start and emit
every pair's example, none twice. (Tansu refuses commits from outside a group
it has seen members of, so the group is a fresh one; the unit tests in
``tests/unit/test_join_rewind.py`` cover a table that handled some records.)
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kafka import errors as kafka_errors
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas.codec import decode
from schemas.events import TrainingExample
from services.kafka import high_watermarks, make_admin
from services.learning.pool import partition_of
from tests.integration._join_input import (
    REWIND_MARKER,
    T0,
    InputShape,
    feedback_value,
    inference_value,
)
from tests.integration._procs import (
    WorkerProcess,
    produce,
    read_topic,
    worker_env,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

SHAPE = InputShape(model="ca-logreg", requests=24)


def commit(sandbox: Sandbox, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` from outside, once it has no members
    (a stopped member may be remembered until its session expires)."""
    admin = make_admin(sandbox.kafka)
    deadline = time.monotonic() + 90
    try:
        while True:
            answer = admin.alter_group_offsets(
                group, {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            )
            failed = {tp: err for tp, err in answer.items() if err is not kafka_errors.NoError}
            if not failed:
                return
            assert time.monotonic() < deadline, f"committing {offsets} for {group}: {failed}"
            time.sleep(1.0)
    finally:
        admin.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_group_committed_past_the_join_table_is_rewound_to_it(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    rng = random.Random(7)
    topics = sandbox.topics
    group = f"joiner-{sandbox.name}"
    logs = [
        (f"req-{i}".encode(), inference_value(SHAPE, i, T0 + rng.randrange(10_000)))
        for i in range(SHAPE.requests)
    ]
    answers = [
        (f"req-{i}".encode(), feedback_value(SHAPE, f"req-{i}", f"fb-{i}", T0 + 20_000, True))
        for i in range(SHAPE.requests)
    ]
    produce(sandbox, topics.inference_logs, logs)
    produce(sandbox, topics.feedback, answers)
    ends = {
        TopicPartition(tp.topic, tp.partition): end
        for tp, end in high_watermarks(
            sandbox.kafka, [topics.inference_logs, topics.feedback]
        ).items()
    }
    assert all(end > 0 for end in ends.values()), ends
    commit(sandbox, group, ends)  # committed past records nobody joined

    joiner = WorkerProcess(
        "joiner",
        worker_env(sandbox, app_id=group, DRIFTLOOP_WORKER_DATADIR=str(tmp_path / "data")),
        tmp_path / "joiner.log",
    )
    started.append(joiner)
    out = topics.training_examples
    home = partition_of(SHAPE.model, topics.partitions)
    values = read_topic(sandbox, out, SHAPE.requests, timeout_s=120)
    examples = {decode(TrainingExample, v).request_id for v in values}
    assert examples == {f"req-{i}" for i in range(SHAPE.requests)}
    rewinds = [line for line in joiner.text().splitlines() if REWIND_MARKER in line]
    for tp, end in ends.items():  # each one logged with the committed and the table's offset
        expected = (
            f"{tp.topic}[{tp.partition}] committed at {end}"
            " but its table accounts for it only up to 0"
        )
        assert any(expected in line for line in rewinds), (expected, rewinds)
    assert joiner.terminate() == 0, joiner.text()[-3000:]
    written = high_watermarks(sandbox.kafka, [out])
    assert sum(written.values()) == SHAPE.requests  # none twice
    assert all(end == 0 for tp, end in written.items() if tp.partition != home)
