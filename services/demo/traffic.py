"""Synthetic production traffic for the demo: inference logs and messy feedback.

:func:`generate` turns a drifting river stream into the records a model server
and a feedback producer would write, in the order they would reach Kafka:

- one InferenceLog per request, ``interval_ms`` apart in event time;
- feedback after a random delay, so it arrives out of order;
- some feedback *before* its inference log (the log was delivered late);
- some feedback twice (same ``event_id``: a producer retry);
- some requests with no feedback at all;
- some feedback far past the attribution window (the joiner dead-letters it
  as ``late``);
- a few malformed records (the joiner dead-letters them with the reason).

The concept is inverted at ``drift_at`` (a SEA stream whose labels flip), which
the trainer's drift detectors should notice. Everything
is derived from ``seed``: the same settings give the same records.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from river.datasets import synth

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog

TopicKey = Literal["inference_logs", "feedback"]


@dataclass(frozen=True)
class TrafficConfig:
    """Shape of the synthetic traffic (event-time durations in milliseconds)."""

    model: str = "river-logreg"
    model_version: str = "bootstrap"
    requests: int = 6_000
    drift_at: int = 3_000
    seed: int = 7
    start_ts: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z, fixed for repeatable runs
    interval_ms: int = 20
    feedback_delay_ms: tuple[int, int] = (50, 3_000)
    late_after_ms: int = 45_000
    """Delay of late feedback: past the demo joiner's window + grace (32 s) but
    within the time it remembers closed requests, so it is told ``late``."""
    p_feedback_first: float = 0.05
    p_duplicate: float = 0.05
    p_missing: float = 0.03
    p_late: float = 0.01
    p_malformed: float = 0.003
    late_tail: float = 0.8
    """Late feedback is only made for the first ``late_tail`` of the requests,
    so later traffic still moves the joiner's watermark past its window."""


@dataclass(frozen=True)
class TrafficRecord:
    """One record to produce: where to, its key and value, and when it arrives."""

    topic: TopicKey
    key: bytes
    value: bytes
    arrives_ms: int


@dataclass
class TrafficSummary:
    """What :func:`generate` made, for the demo's expectations and summary."""

    requests: int = 0
    feedback: int = 0
    feedback_first: int = 0
    duplicates: int = 0
    missing: int = 0
    late: int = 0
    malformed: int = 0
    records: int = 0
    labels: dict[str, int] = field(default_factory=dict)


def _stream(config: TrafficConfig) -> Iterator[tuple[dict[str, float], bool]]:
    """SEA examples whose concept is inverted from ``drift_at`` on.

    SEA labels ``x0 + x1 <= threshold``; from ``drift_at`` the same inputs get
    the opposite label (what users rewarded they now reject): a sudden real
    concept drift that a model which has learned the old concept cannot miss.
    """
    for i, (x, y) in enumerate(synth.SEA(variant=0, seed=config.seed).take(config.requests)):
        features = {f"x{k}": float(v) for k, v in x.items()}
        yield features, bool(y) != (i >= config.drift_at)


def generate(config: TrafficConfig) -> tuple[list[TrafficRecord], TrafficSummary]:
    """All records of the synthetic traffic, sorted by arrival time."""
    rng = random.Random(config.seed)  # noqa: S311 - seeded synthetic traffic, not a secret
    summary = TrafficSummary()
    records: list[TrafficRecord] = []
    lo, hi = config.feedback_delay_ms
    for i, (features, label) in enumerate(_stream(config)):
        request_id = f"req-{config.seed}-{i:07d}"
        key = request_id.encode()
        ts = config.start_ts + i * config.interval_ms
        log = InferenceLog(
            schema_version=1,
            event_id=f"inf-{request_id}",
            ts=ts,
            request_id=request_id,
            model=config.model,
            model_version=config.model_version,
            features=features,
            prediction=False,
            route="live",
            server="demo-traffic",
        )
        summary.requests += 1
        summary.labels[str(label)] = summary.labels.get(str(label), 0) + 1
        log_arrives = ts
        if rng.random() < config.p_missing:
            summary.missing += 1
            records.append(TrafficRecord("inference_logs", key, encode(log), log_arrives))
            continue
        late = i < config.requests * config.late_tail and rng.random() < config.p_late
        delay = config.late_after_ms if late else rng.randint(lo, hi)
        feedback = FeedbackEvent(
            schema_version=1,
            event_id=f"fb-{request_id}",
            ts=ts + delay,
            request_id=request_id,
            model=config.model,
            label=label,
        )
        body = encode(feedback)
        records.append(TrafficRecord("feedback", key, body, ts + delay))
        summary.feedback += 1
        summary.late += late
        if not late and rng.random() < config.p_feedback_first:
            # The log reaches Kafka after its feedback (a slow logging path).
            log_arrives = ts + delay + rng.randint(1, hi)
            summary.feedback_first += 1
        records.append(TrafficRecord("inference_logs", key, encode(log), log_arrives))
        if not late and rng.random() < config.p_duplicate:
            records.append(TrafficRecord("feedback", key, body, ts + delay + rng.randint(1, hi)))
            summary.duplicates += 1
        if rng.random() < config.p_malformed:
            garbage = rng.choice([b"{not json", b'{"schema_version": 99}', b"\xff\xfe"])
            topic: TopicKey = rng.choice(["inference_logs", "feedback"])
            records.append(TrafficRecord(topic, key, garbage, ts))
            summary.malformed += 1
    records.sort(key=lambda r: r.arrives_ms)
    summary.records = len(records)
    return records, summary
