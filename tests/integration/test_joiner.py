"""The joiner as real worker processes on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode, encode
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog, TrainingExample
from services.kafka import make_consumer, make_producer

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MIN = 60_000


def _env(sandbox: Sandbox, **join: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(sandbox.stack.env())
    env.update(
        {
            "DRIFTLOOP_KAFKA_BOOTSTRAP": sandbox.kafka.bootstrap,
            "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": str(sandbox.kafka.session_timeout_ms),
            "DRIFTLOOP_KAFKA_HEARTBEAT_INTERVAL_MS": str(sandbox.kafka.heartbeat_interval_ms),
            "DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS": str(sandbox.kafka.max_poll_interval_ms),
            "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
            "DRIFTLOOP_TOPIC_PARTITIONS": str(sandbox.topics.partitions),
            "DRIFTLOOP_JOIN_APP_ID": f"joiner-{sandbox.name}",
            "DRIFTLOOP_LOG_LEVEL": "info",
        }
    )
    env.update({f"DRIFTLOOP_JOIN_{k.upper()}": v for k, v in join.items()})
    return env


@pytest.fixture
def workers(sandbox: Sandbox, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def _start(
    sandbox: Sandbox, tmp_path: Path, started: list[subprocess.Popen[bytes]], **join: str
) -> subprocess.Popen[bytes]:
    env = _env(sandbox, **join)
    env["DRIFTLOOP_JOIN_DATADIR"] = str(tmp_path / f"w{len(started)}")
    log = (tmp_path / f"w{len(started)}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.joiner"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    started.append(proc)
    return proc


def _wait_until_both_own_partitions(tmp_path: Path, timeout_s: float = 60.0) -> None:
    """Wait until each worker's log says it owns at least one partition."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = [(tmp_path / f"w{i}.log").read_text(errors="replace") for i in range(2)]
        owned = [
            [line for line in text.splitlines() if "owns partitions [" in line] for text in logs
        ]
        if all(lines and "owns partitions []" not in lines[-1] for lines in owned):
            return
        time.sleep(0.5)
    raise AssertionError("the two joiner workers did not share the partitions")


def _send(sandbox: Sandbox, records: list[tuple[str, str, bytes]]) -> None:
    producer = make_producer(sandbox.kafka)
    for topic, key, value in records:
        producer.send(topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()


def _read_until(
    sandbox: Sandbox, topic: str, done: Callable[[list[bytes]], bool], timeout_s: float = 90.0
) -> list[bytes]:
    consumer = make_consumer(sandbox.kafka, topic, consumer_timeout_ms=1_000)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(values):
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in batch)
    consumer.close()
    return values


def _inference(rid: str, ts: int) -> bytes:
    return encode(
        InferenceLog.new(
            event_id=f"i-{rid}",
            request_id=rid,
            model="ctr",
            model_version="v1",
            ts=ts,
            features={"x": float(len(rid))},
            prediction=0.5,
        )
    )


def _feedback(rid: str, ts: int, eid: str) -> bytes:
    return encode(FeedbackEvent.new(event_id=eid, request_id=rid, model="ctr", ts=ts, label=1))


def test_joiner_joins_both_orders_and_dead_letters_bad_input(
    sandbox: Sandbox, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    inf, fb = sandbox.topics.inference_logs, sandbox.topics.feedback
    _start(sandbox, tmp_path, workers)
    nan_features = _inference("nan", 1_000).replace(b'"x":3.0', b'"x":NaN')
    records = [
        (inf, "a", _inference("a", 1_000)),
        (fb, "a", _feedback("a", 2_000, "fa")),
        (fb, "b", _feedback("b", 2_000, "fb")),  # feedback first
        (inf, "b", _inference("b", 1_500)),
        (fb, "a", _feedback("a", 2_000, "fa")),  # duplicate
        (inf, "junk", b"\xff\xfe not json"),
        (fb, "junk", b'{"schema_version": 1, "event_id": "e"'),
        (inf, "nan", nan_features),
        (
            fb,
            "v9",
            _feedback("v9", 2_000, "f9").replace(b'"schema_version":1', b'"schema_version":9'),
        ),
    ]
    _send(sandbox, records)
    examples = [
        decode(TrainingExample, v)
        for v in _read_until(sandbox, sandbox.topics.training_examples, lambda v: len(v) >= 2)
    ]
    assert sorted((e.request_id, e.feedback_event_id) for e in examples) == [
        ("a", "fa"),
        ("b", "fb"),
    ]
    letters = [
        decode(DeadLetter, v)
        for v in _read_until(sandbox, sandbox.topics.dead_letters, lambda v: len(v) >= 4)
    ]
    kinds = sorted((d.source_topic, d.error_kind, d.field) for d in letters)
    assert kinds == [
        (fb, "decode", None),
        (fb, "validation", "schema_version"),
        (inf, "decode", None),
        (inf, "validation", "features.x"),
    ]
    assert {d.raw_value() for d in letters} >= {b"\xff\xfe not json", nan_features}
    # still alive and joining after all that
    _send(sandbox, [(inf, "c", _inference("c", 3_000)), (fb, "c", _feedback("c", 3_100, "fc"))])
    after = _read_until(sandbox, sandbox.topics.training_examples, lambda v: len(v) >= 3)
    assert {decode(TrainingExample, v).request_id for v in after} == {"a", "b", "c"}
    assert workers[0].poll() is None


@pytest.mark.xfail(
    strict=True,
    reason="on Tansu 0.6 two faust members of one group re-join every ~8 s (same generation, "
    "no new assignment) and never fetch; under investigation, see the joiner report",
)
def test_killing_one_of_two_workers_hands_over_partitions_and_pending_state(
    sandbox: Sandbox, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    inf, fb = sandbox.topics.inference_logs, sandbox.topics.feedback
    victim = _start(sandbox, tmp_path, workers)
    _start(sandbox, tmp_path, workers)
    _wait_until_both_own_partitions(tmp_path)
    n = 60
    # phase 1: every inference, plus feedback for the first half; phase 2: the rest
    first = [(inf, f"r{i}", _inference(f"r{i}", i * 1_000)) for i in range(n)]
    first += [(fb, f"r{i}", _feedback(f"r{i}", i * 1_000 + 500, f"f{i}")) for i in range(n // 2)]
    _send(sandbox, first)
    seen = _read_until(sandbox, sandbox.topics.training_examples, lambda v: len(v) >= n // 2)
    assert len({decode(TrainingExample, v).example_id for v in seen}) == n // 2
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    second = [(fb, f"r{i}", _feedback(f"r{i}", i * 1_000 + 500, f"f{i}")) for i in range(n // 2, n)]
    _send(sandbox, second)

    def complete(values: list[bytes]) -> bool:
        return len({decode(TrainingExample, v).example_id for v in values}) >= n

    values = _read_until(sandbox, sandbox.topics.training_examples, complete, timeout_s=120)
    examples = [decode(TrainingExample, v) for v in values]
    by_id: dict[str, TrainingExample] = {}
    for example in examples:
        # a replayed example is the very same example (the trainer drops it by id)
        assert by_id.setdefault(example.example_id, example).model_dump(
            exclude={"join_latency_ms"}
        ) == example.model_dump(exclude={"join_latency_ms"})
    assert sorted(e.request_id for e in by_id.values()) == sorted(f"r{i}" for i in range(n))
    assert workers[1].poll() is None
