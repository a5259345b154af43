"""The idle-input rule: an input partition with nothing to read is released.

Windows close on the minimum of the inputs' watermarks, so a feedback
partition that never receives anything would keep every window of its
partition open for ever. Guards the release rule of
``services.attribution.expiry``: released only after ``idle_ms`` of unbroken
"read up to the high watermark" checks with no record of it, counted; back
in the minimum as soon as it delivers; the closing watermark never goes back.
"""

from __future__ import annotations

from typing import Any

from schemas.events import FeedbackEvent, InferenceLog
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    Reject,
    SourceRef,
)

MIN = 60_000


def inference(rid: str, ts: int) -> InferenceLog:
    return InferenceLog.new(
        event_id=f"inf-{rid}",
        request_id=rid,
        model="m",
        model_version="v1",
        ts=ts,
        features={"x": 1.0},
        prediction=0.0,
    )


def feedback(rid: str, ts: int, eid: str) -> FeedbackEvent:
    return FeedbackEvent.new(event_id=eid, request_id=rid, model="m", ts=ts, label=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def make(**settings: Any) -> tuple[AttributionJoiner, Clock]:
    clock = Clock()
    config = JoinerConfig(
        window_ms=10 * MIN,
        grace_ms=MIN,
        no_feedback_policy="default",
        idle_ms=settings.pop("idle_ms", 5_000),
        **settings,
    )
    return AttributionJoiner(config, InMemoryPendingStore(), clock=clock), clock


def at(topic: str, offset: int) -> SourceRef:
    return SourceRef(topic=topic, partition=0, offset=offset)


def test_a_feedback_partition_with_nothing_to_read_is_released_after_idle_ms() -> None:
    joiner, clock = make()
    joiner.on_inference(inference("r1", 0), at("i", 0))
    # without feedback on the partition, nothing closes, however far the logs go
    assert joiner.on_inference(inference("r2", 30 * MIN), at("i", 1)) == []
    assert not joiner.report_caught_up("feedback", 0)
    clock.now += 4_999
    assert not joiner.report_caught_up("feedback", 0)
    assert joiner.stats.idle_releases == 0
    clock.now += 1
    assert joiner.report_caught_up("feedback", 0)
    assert joiner.stats.idle_releases == 1
    assert joiner.watermarks.is_idle(0, "feedback")
    # the next record closes what the inference watermark alone has passed
    out = joiner.on_inference(inference("r3", 30 * MIN + 1), at("i", 2))
    assert [
        (o.example.request_id, o.example.label_is_default) for o in out if isinstance(o, Emit)
    ] == [("r1", True)]
    # released once, not at every check
    clock.now += 60_000
    assert not joiner.report_caught_up("feedback", 0)
    assert joiner.stats.idle_releases == 1
    assert "driftloop_join_idle_releases_total 1" in joiner.stats.prometheus_text()


def test_a_check_that_finds_it_behind_or_a_record_starts_the_wait_again() -> None:
    joiner, clock = make()
    joiner.on_inference(inference("r1", 0), at("i", 0))
    joiner.report_caught_up("feedback", 0)
    clock.now += 3_000
    joiner.report_caught_up("feedback", 0, caught_up=False)  # a backlog appeared
    clock.now += 1_000
    joiner.report_caught_up("feedback", 0)  # caught up again: the wait starts here
    clock.now += 4_999
    assert not joiner.report_caught_up("feedback", 0)
    joiner.on_feedback(feedback("x", 1_000, "f0"), at("f", 0))  # a record: again
    clock.now += 1
    assert not joiner.report_caught_up("feedback", 0)
    clock.now += 4_999
    assert not joiner.report_caught_up("feedback", 0)
    clock.now += 1
    assert joiner.report_caught_up("feedback", 0)
    assert joiner.stats.idle_releases == 1


def test_a_released_input_rejoins_when_it_delivers_and_the_closing_mark_never_goes_back() -> None:
    joiner, clock = make(feedback_policy="last")
    joiner.on_feedback(feedback("early", 0, "f-early"), at("f", 0))
    joiner.on_inference(inference("r1", 0), at("i", 0))
    joiner.on_inference(inference("r2", 20 * MIN), at("i", 1))
    assert joiner.watermarks.closing(0, clock.now) == 0
    joiner.report_caught_up("feedback", 0)
    clock.now += 5_000
    assert joiner.report_caught_up("feedback", 0)
    out = joiner.on_inference(inference("r3", 20 * MIN + 1), at("i", 2))
    assert joiner.watermarks.closing(0, clock.now) == 20 * MIN + 1
    assert [o.example.request_id for o in out if isinstance(o, Emit)] == ["r1"]
    # feedback comes back, far behind the closing watermark
    out = joiner.on_feedback(feedback("r1", 5 * MIN, "f1"), at("f", 1))
    assert not joiner.watermarks.is_idle(0, "feedback")
    assert joiner.watermarks.closing(0, clock.now) == 20 * MIN + 1  # not back to 5 min
    # not late by its own topic, but its window was closed by the release
    assert [(o.kind, o.reason) for o in out if isinstance(o, Reject)] == [
        ("late", "feedback after its window closed")
    ]
    # back in the minimum: the inference watermark alone no longer closes r2
    assert joiner.on_inference(inference("r4", 40 * MIN), at("i", 3)) == []
    assert joiner.stats.idle_releases == 1


def test_a_release_lapses_when_the_worker_was_stopped_longer_than_idle_ms() -> None:
    """A worker paused (SIGSTOP, a long GC) may come back to a backlog on the
    input it had found idle, with a stale high watermark: the release must
    not close windows over that backlog."""
    joiner, clock = make()
    joiner.on_inference(inference("r1", 0), at("i", 0))
    joiner.on_feedback(feedback("x", 0, "f0"), at("f", 0))
    joiner.report_caught_up("feedback", 0)
    clock.now += 5_000
    assert joiner.report_caught_up("feedback", 0)
    clock.now += 5_001  # stopped: no check since
    assert joiner.on_inference(inference("r2", 30 * MIN), at("i", 1)) == []
    assert not joiner.watermarks.is_idle(0, "feedback")
    # and the first check after the pause starts the wait again, stale or not
    assert not joiner.report_caught_up("feedback", 0)
    clock.now += 4_000
    assert not joiner.report_caught_up("feedback", 0)
    assert joiner.stats.idle_releases == 1


def test_idle_ms_zero_never_releases() -> None:
    joiner, clock = make(idle_ms=0)
    joiner.on_inference(inference("r1", 0), at("i", 0))
    for _ in range(5):
        clock.now += 10 * MIN
        assert not joiner.report_caught_up("feedback", 0)
    assert joiner.on_inference(inference("r2", 30 * MIN), at("i", 1)) == []
    assert joiner.stats.idle_releases == 0


def test_a_partition_not_owned_is_never_released() -> None:
    joiner, clock = make()
    joiner.report_caught_up("feedback", 7)
    clock.now += 10 * MIN
    assert not joiner.report_caught_up("feedback", 7)
