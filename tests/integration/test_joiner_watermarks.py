"""A dense topic's backlog never closes the windows of the sparse topic's unread records.

Guards issue 9 item 1 with a real ``driftloop worker --role joiner`` on the
real broker. 600 requests, one every 3 s of event time, feedback for half of
them 2 s after the log, all produced while the worker is stopped (SIGSTOP),
every log before any feedback: when it resumes, the worker finds a backlog
of 600 logs spanning 30 minutes of event time and 300 feedback events, and
reads both topics at similar record rates, so the logs run far ahead in
event time. With one watermark per partition shared by both topics, the
logs' watermark closed the windows (10 minutes + 30 s grace) of feedback not
yet read: the issue measured 221-223 of 300 pairs joined, the rest
dead-lettered as ``orphan`` and their logs as ``late``. Windows must close
only once *both* topics have passed them: every pair joins, exactly once,
and nothing is dead-lettered.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode, encode
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog, TrainingExample
from services.kafka import high_watermarks
from tests.integration._procs import (
    WorkerProcess,
    produce,
    read_topic,
    wait_committed,
    worker_env,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

REQUESTS = 600
SPACING_MS = 3_000
FEEDBACK_DELAY_MS = 2_000
T0 = 1_700_000_000_000


@pytest.fixture
def started() -> Iterator[list[WorkerProcess]]:
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        if proc.alive():
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.kill()


def _log(i: int) -> tuple[bytes, bytes]:
    event = InferenceLog.new(
        event_id=f"inf-{i}",
        request_id=f"req-{i}",
        model="wm",
        model_version="v1",
        ts=T0 + i * SPACING_MS,
        features={"x": float(i)},
        prediction=0.5,
    )
    return event.request_id.encode(), encode(event)


def _feedback(i: int) -> tuple[bytes, bytes]:
    event = FeedbackEvent.new(
        event_id=f"fb-{i}",
        request_id=f"req-{i}",
        model="wm",
        ts=T0 + i * SPACING_MS + FEEDBACK_DELAY_MS,
        label=i % 3 == 0,
    )
    return event.request_id.encode(), encode(event)


def test_a_backlog_of_logs_read_ahead_of_the_feedback_loses_no_pair(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    inf, fb = sandbox.topics.inference_logs, sandbox.topics.feedback
    group = f"joiner-{sandbox.name}"
    env = worker_env(sandbox, app_id=group, DRIFTLOOP_WORKER_DATADIR=str(tmp_path / "datadir"))
    joiner = WorkerProcess("joiner", env, tmp_path / "joiner.log")
    started.append(joiner)
    assert joiner.wait_for("joiner owns partitions [0, 1, 2]"), joiner.text()[-3000:]

    os.kill(joiner.proc.pid, signal.SIGSTOP)
    try:
        produce(sandbox, inf, (_log(i) for i in range(REQUESTS)))
        produce(sandbox, fb, (_feedback(i) for i in range(0, REQUESTS, 2)))
    finally:
        os.kill(joiner.proc.pid, signal.SIGCONT)

    inputs = high_watermarks(sandbox.kafka, [inf, fb])
    assert sum(inputs.values()) == REQUESTS + REQUESTS // 2
    targets: dict[str, dict[int, int]] = {inf: {}, fb: {}}
    for tp, end in inputs.items():
        targets[tp.topic][tp.partition] = end
    wait_committed(sandbox, group, targets, joiner, timeout_s=120)

    outputs = high_watermarks(
        sandbox.kafka, [sandbox.topics.training_examples, sandbox.topics.dead_letters]
    )
    written = {
        topic: sum(end for tp, end in outputs.items() if tp.topic == topic)
        for topic in (sandbox.topics.training_examples, sandbox.topics.dead_letters)
    }
    letters = [
        decode(DeadLetter, v)
        for v in read_topic(
            sandbox, sandbox.topics.dead_letters, written[sandbox.topics.dead_letters]
        )
    ]
    assert [(d.source_topic, d.error_kind, d.error) for d in letters] == []
    examples = [
        decode(TrainingExample, v)
        for v in read_topic(
            sandbox, sandbox.topics.training_examples, written[sandbox.topics.training_examples]
        )
    ]
    joined = sorted(int(e.request_id.removeprefix("req-")) for e in examples)
    assert joined == list(range(0, REQUESTS, 2)), (
        f"{REQUESTS // 2 - len(set(joined))} pairs lost, {len(joined) - len(set(joined))} doubled"
    )
    # each example's ts is its pair's event time, not the watermark it was read at
    assert all(e.ts == e.feedback_ts for e in examples)
    assert joiner.alive()


def test_a_feedback_partition_with_nothing_to_read_is_released_and_windows_close(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    """The idle rule in a real worker: logs without any feedback on their
    partition. Their windows close on the logs' watermark only once the
    worker has found the feedback partition read up to its high watermark
    for ``idle_ms`` (released, logged and counted); then the next log closes
    them and the default label goes out. Without the rule they would wait for
    feedback for ever (today's main has no rule to observe: no release is
    ever logged)."""
    inf = sandbox.topics.inference_logs
    group = f"joiner-{sandbox.name}"
    env = worker_env(
        sandbox,
        app_id=group,
        DRIFTLOOP_WORKER_DATADIR=str(tmp_path / "datadir"),
        DRIFTLOOP_JOIN_IDLE_MS="1500",
        DRIFTLOOP_JOIN_NO_FEEDBACK_POLICY="default",
        DRIFTLOOP_LOG_LEVEL="info",
    )
    joiner = WorkerProcess("joiner", env, tmp_path / "joiner.log")
    started.append(joiner)
    assert joiner.wait_for("joiner owns partitions [0, 1, 2]"), joiner.text()[-3000:]
    key = b"one-partition"  # both logs on the same partition
    first = InferenceLog.new(
        event_id="inf-a", request_id="a", model="wm", model_version="v1", ts=T0,
        features={"x": 1.0}, prediction=0.5,
    )  # fmt: skip
    produce(sandbox, inf, [(key, encode(first))])
    (tp,) = [tp for tp, end in high_watermarks(sandbox.kafka, [inf]).items() if end]
    # released once that partition's feedback has been idle for idle_ms after the log
    marker = f"feedback:{tp.partition} read up to its high watermark"
    assert joiner.wait_for(marker, timeout_s=60), joiner.text()[-3000:]
    later = first.model_copy(
        update={"event_id": "inf-b", "request_id": "b", "ts": T0 + 20 * 60_000}
    )
    produce(sandbox, inf, [(key, encode(later))])
    (value,) = read_topic(sandbox, sandbox.topics.training_examples, 1)
    example = decode(TrainingExample, value)
    assert (example.request_id, example.label_is_default) == ("a", True)
    assert example.ts == T0 + 10 * 60_000 + 30_000  # the window's end, from the events
    assert joiner.alive()
