"""The demo's synthetic traffic has the mess it promises, and is repeatable."""

from __future__ import annotations

from collections import Counter

import pytest

from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.events import FeedbackEvent, InferenceLog
from services.demo.traffic import TrafficConfig, generate

CONFIG = TrafficConfig(requests=3000, drift_at=1500, seed=11)


def _decoded(config: TrafficConfig) -> tuple[list[InferenceLog], list[FeedbackEvent], int]:
    records, _ = generate(config)
    logs: list[InferenceLog] = []
    feedback: list[FeedbackEvent] = []
    bad = 0
    for r in records:
        try:
            if r.topic == "inference_logs":
                logs.append(decode(InferenceLog, r.value))
            else:
                feedback.append(decode(FeedbackEvent, r.value))
        except SchemaError:
            bad += 1
    return logs, feedback, bad


def test_same_seed_same_records_other_seed_other_records() -> None:
    assert generate(CONFIG)[0] == generate(CONFIG)[0]
    other = TrafficConfig(requests=3000, drift_at=1500, seed=12)
    assert generate(CONFIG)[0] != generate(other)[0]


def test_records_arrive_in_order_and_every_request_is_logged_once() -> None:
    records, summary = generate(CONFIG)
    assert [r.arrives_ms for r in records] == sorted(r.arrives_ms for r in records)
    logs, _, bad = _decoded(CONFIG)
    assert len(logs) == len({log.request_id for log in logs}) == summary.requests == 3000
    assert bad == summary.malformed
    assert summary.records == len(records)


def test_feedback_is_messy_as_described() -> None:
    records, summary = generate(CONFIG)
    logs, feedback, _ = _decoded(CONFIG)
    by_id = Counter(f.event_id for f in feedback)
    assert sum(n - 1 for n in by_id.values()) == summary.duplicates > 0
    requests_with_feedback = {f.request_id for f in feedback}
    assert summary.requests - len(requests_with_feedback) == summary.missing > 0
    log_ts = {log.request_id: log.ts for log in logs}
    delays = [f.ts - log_ts[f.request_id] for f in feedback]
    assert all(d > 0 for d in delays)
    assert sum(d >= CONFIG.late_after_ms for d in set(delays)) >= 1
    assert summary.late > 0
    # Some feedback reaches Kafka before the log of its request.
    first_seen: dict[str, str] = {}
    for r in records:
        first_seen.setdefault(r.key.decode(), r.topic)
    assert sum(topic == "feedback" for topic in first_seen.values()) == summary.feedback_first > 0


@pytest.mark.parametrize("drift_at", [1, 1500, 2999])
def test_drift_point_anywhere_in_the_stream(drift_at: int) -> None:
    _, summary = generate(TrafficConfig(requests=3000, drift_at=drift_at))
    assert summary.requests == 3000
    assert summary.labels.keys() == {"True", "False"}
