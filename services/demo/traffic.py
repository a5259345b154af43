"""Synthetic production traffic for the demo: requests and their messy feedback.

:func:`plan` turns a drifting river stream into what users of a model server
would do, request by request (the :class:`~services.demo.driver.TrafficDriver`
carries it out on the wall clock, over HTTP and Kafka):

- one predict request per example, ``interval_ms`` apart;
- feedback after a random delay from the answer, so it arrives out of order;
- some feedback *before* its request is even sent (the log reaches Kafka
  after its feedback: a slow logging path);
- some feedback twice (same ``event_id``: a producer retry, sent again by the
  other path);
- some requests with no feedback at all;
- some feedback far past the attribution window (the joiner dead-letters it
  as ``late``);
- a few malformed records written straight to a topic, as a buggy producer
  would (the joiner dead-letters them with the reason).

Feedback goes half through a model server's ``POST /v1/feedback`` and half
straight to the ``feedback`` topic (``via``). The concept is inverted at
``drift_at`` (a SEA stream whose labels flip), which the trainer's drift
detectors should notice. Everything but the timing is derived from ``seed``:
the same settings give the same request ids, features, labels and mess.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from river.datasets import synth

TopicKey = Literal["inference_logs", "feedback"]
Via = Literal["http", "topic"]


@dataclass(frozen=True)
class TrafficConfig:
    """Shape of the synthetic traffic (wall-clock durations in milliseconds)."""

    model: str = "river-logreg"
    requests: int = 6_000
    drift_at: int = 3_000
    seed: int = 7
    interval_ms: float = 4.0
    """Pacing: one request every ``interval_ms`` (so 250 requests/s)."""
    batch: int = 32
    """Most instances in one predict call."""
    feedback_delay_ms: tuple[int, int] = (50, 2_000)
    late_after_ms: int = 10_000
    """Delay of late feedback: past the demo joiner's window (6 s) but within
    the time it remembers closed requests (window + grace + window = 14 s), so
    it is told ``late``."""
    p_feedback_first: float = 0.05
    p_duplicate: float = 0.05
    p_missing: float = 0.03
    p_late: float = 0.01
    p_malformed: float = 0.003
    p_feedback_http: float = 0.5
    late_tail: float = 0.8
    """Late feedback is only made for the first ``late_tail`` of the requests,
    so later traffic still moves the joiner's watermark past its window."""


@dataclass(frozen=True)
class PlannedFeedback:
    """The feedback one request gets."""

    event_id: str
    label: bool
    delay_ms: int
    """After the answer (or, with ``before_log``, before the request)."""
    late: bool
    before_log: bool
    """Sent first; the predict request follows ``delay_ms`` later."""
    via: Via
    repeat_after_ms: int | None
    """A retry: the same event sent again this long after, by the other path."""


@dataclass(frozen=True)
class PlannedRequest:
    """One predict request and what follows it."""

    index: int
    request_id: str
    features: dict[str, float]
    label: bool
    feedback: PlannedFeedback | None
    garbage: tuple[TopicKey, bytes] | None = None


@dataclass
class TrafficSummary:
    """What :func:`plan` made, for the demo's expectations and summary."""

    requests: int = 0
    feedback: int = 0
    feedback_first: int = 0
    duplicates: int = 0
    missing: int = 0
    late: int = 0
    malformed: int = 0
    feedback_http: int = 0
    feedback_topic: int = 0
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


def plan(config: TrafficConfig) -> tuple[list[PlannedRequest], TrafficSummary]:
    """Every request of the synthetic traffic, in the order it is sent."""
    rng = random.Random(config.seed)  # noqa: S311 - seeded synthetic traffic, not a secret
    summary = TrafficSummary()
    out: list[PlannedRequest] = []
    lo, hi = config.feedback_delay_ms
    for i, (features, label) in enumerate(_stream(config)):
        request_id = f"req-{config.seed}-{i:07d}"
        summary.requests += 1
        summary.labels[str(label)] = summary.labels.get(str(label), 0) + 1
        feedback: PlannedFeedback | None = None
        if rng.random() < config.p_missing:
            summary.missing += 1
        else:
            late = i < config.requests * config.late_tail and rng.random() < config.p_late
            first = not late and rng.random() < config.p_feedback_first
            repeat = not late and rng.random() < config.p_duplicate
            via: Via = "http" if rng.random() < config.p_feedback_http else "topic"
            feedback = PlannedFeedback(
                event_id=f"fb-{request_id}",
                label=label,
                delay_ms=config.late_after_ms if late else rng.randint(lo, hi),
                late=late,
                before_log=first,
                via=via,
                repeat_after_ms=rng.randint(1, hi) if repeat else None,
            )
            summary.feedback += 1
            summary.late += late
            summary.feedback_first += first
            summary.duplicates += repeat
            summary.feedback_http += via == "http"
            summary.feedback_topic += via == "topic"
        garbage: tuple[TopicKey, bytes] | None = None
        if rng.random() < config.p_malformed:
            body = rng.choice([b"{not json", b'{"schema_version": 99}', b"\xff\xfe"])
            topic: TopicKey = rng.choice(["inference_logs", "feedback"])
            garbage = (topic, body)
            summary.malformed += 1
        out.append(PlannedRequest(i, request_id, features, label, feedback, garbage))
    return out, summary
