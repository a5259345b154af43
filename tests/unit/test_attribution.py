"""The attribution join's rules, on the in-memory store (no network)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog, training_example_id
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    Outcome,
    Reject,
    SourceRef,
)

MIN = 60_000
_offsets = itertools.count()


def inference(rid: str, ts: int, *, eid: str | None = None, version: str = "v1") -> InferenceLog:
    return InferenceLog.new(
        event_id=eid or f"inf-{rid}",
        request_id=rid,
        model="ctr",
        model_version=version,
        ts=ts,
        features={"x": 1.5, "country": "fr", "new": True},
        prediction=0.3,
    )


def feedback(rid: str, ts: int, label: Any = 1, *, eid: str, weight: float = 1.0) -> FeedbackEvent:
    return FeedbackEvent.new(
        event_id=eid, request_id=rid, model="ctr", ts=ts, label=label, weight=weight
    )


def src(topic: str, partition: int = 0) -> SourceRef:
    return SourceRef(topic=topic, partition=partition, offset=next(_offsets))


def make(**settings: Any) -> tuple[AttributionJoiner, InMemoryPendingStore]:
    store = InMemoryPendingStore()
    config = JoinerConfig(window_ms=10 * MIN, grace_ms=1 * MIN, **settings)
    return AttributionJoiner(config, store, clock=lambda: 5), store


def feed(
    joiner: AttributionJoiner, event: InferenceLog | FeedbackEvent, p: int = 0
) -> list[Outcome]:
    if isinstance(event, InferenceLog):
        return joiner.on_inference(event, src("inference-logs", p))
    return joiner.on_feedback(event, src("feedback", p))


def tick(joiner: AttributionJoiner, ts: int, p: int = 0) -> list[Outcome]:
    """Both inputs of partition ``p`` reach ``ts``: close what that passes."""
    return joiner.advance(p, ts, "inference") + joiner.advance(p, ts, "feedback")


def examples(outcomes: list[Outcome]) -> list[Any]:
    return [o.example for o in outcomes if isinstance(o, Emit)]


def rejects(outcomes: list[Outcome]) -> list[Reject]:
    return [o for o in outcomes if isinstance(o, Reject)]


def test_inference_then_feedback_emits_at_once_under_first() -> None:
    joiner, _ = make()
    assert feed(joiner, inference("r1", 1_000, version="v7")) == []
    out = examples(feed(joiner, feedback("r1", 4_000, label=1, eid="f1", weight=2.0)))
    assert len(out) == 1
    ex = out[0]
    assert ex.example_id == training_example_id("r1", "f1") == ex.event_id
    assert (ex.model, ex.model_version, ex.label, ex.weight) == ("ctr", "v7", 1, 2.0)
    assert ex.features == {"x": 1.5, "country": "fr", "new": True}
    assert (ex.inference_ts, ex.feedback_ts, ex.label_is_default) == (1_000, 4_000, False)
    assert (ex.inference_event_id, ex.feedback_event_id) == ("inf-r1", "f1")
    assert joiner.stats.joins == 1


def test_feedback_that_comes_first_is_matched_when_its_inference_arrives() -> None:
    joiner, _ = make()
    assert feed(joiner, feedback("r1", 2_000, eid="f1")) == []
    assert joiner.stats.pending_feedback == 1
    out = examples(feed(joiner, inference("r1", 1_000)))
    assert [e.feedback_event_id for e in out] == ["f1"]
    assert joiner.stats.pending_feedback == 0


def test_duplicates_never_count_twice() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 1_000))
    feed(joiner, inference("r1", 1_000))
    first = examples(feed(joiner, feedback("r1", 2_000, eid="f1")))
    again = feed(joiner, feedback("r1", 2_000, eid="f1"))
    assert len(first) == 1
    assert again == []
    assert joiner.stats.duplicates == 2
    assert joiner.stats.joins == 1


def test_duplicates_can_be_dead_lettered() -> None:
    joiner, _ = make(dead_letter_duplicates=True)
    feed(joiner, feedback("r1", 2_000, eid="f1"))
    out = rejects(feed(joiner, feedback("r1", 2_000, eid="f1")))
    assert [r.kind for r in out] == ["duplicate"]


def test_a_second_inference_log_for_one_request_is_dead_lettered() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 1_000, eid="a"))
    out = rejects(feed(joiner, inference("r1", 1_100, eid="b")))
    assert [(r.kind, r.field) for r in out] == [("duplicate", "request_id")]


def test_first_policy_ignores_later_feedback() -> None:
    joiner, _ = make(feedback_policy="first")
    feed(joiner, inference("r1", 0))
    out = examples(feed(joiner, feedback("r1", 1_000, label=0, eid="f1")))
    out += examples(feed(joiner, feedback("r1", 2_000, label=1, eid="f2")))
    out += examples(tick(joiner, 20 * MIN))
    assert [e.label for e in out] == [0]
    assert joiner.stats.superseded == 1


def test_last_policy_emits_the_latest_feedback_when_the_window_closes() -> None:
    joiner, _ = make(feedback_policy="last")
    feed(joiner, inference("r1", 0))
    # arrival order differs from event time: "last" is by ts
    assert feed(joiner, feedback("r1", 3_000, label=1, eid="f2")) == []
    assert feed(joiner, feedback("r1", 1_000, label=0, eid="f1")) == []
    # both inputs must pass ts + window + grace before anything is emitted
    assert examples(tick(joiner, 11 * MIN)) == []
    assert examples(joiner.advance(0, 11 * MIN + 1, "inference")) == []
    out = examples(joiner.advance(0, 11 * MIN + 1, "feedback"))
    assert [(e.label, e.feedback_event_id) for e in out] == [(1, "f2")]
    assert out[0].ts == 11 * MIN  # the window's end, not when it was read


def test_sum_policy_adds_labels_and_keeps_the_earliest_feedback_as_its_id() -> None:
    joiner, _ = make(feedback_policy="sum")
    feed(joiner, inference("r1", 0))
    feed(joiner, feedback("r1", 2_000, label=2.5, eid="b", weight=1.0))
    feed(joiner, feedback("r1", 1_000, label=1, eid="a", weight=3.0))
    out = examples(tick(joiner, 12 * MIN))
    assert [(e.label, e.weight, e.feedback_event_id) for e in out] == [(3.5, 2.0, "a")]


def test_sum_policy_refuses_text_labels() -> None:
    joiner, _ = make(feedback_policy="sum")
    out = rejects(feed(joiner, feedback("r1", 2_000, label="yes", eid="a")))
    assert [(r.kind, r.field) for r in out] == [("validation", "label")]


def test_window_without_feedback_is_dropped_by_default() -> None:
    joiner, store = make()
    feed(joiner, inference("r1", 0))
    assert examples(tick(joiner, 12 * MIN)) == []
    assert joiner.stats.dropped_unlabeled == 1
    assert store.get("r1") is not None  # remembered as closed
    assert joiner.stats.closed_remembered == 1


def test_window_without_feedback_can_emit_the_default_label() -> None:
    joiner, _ = make(no_feedback_policy="default", default_label=0.0, default_weight=0.5)
    feed(joiner, inference("r1", 0, version="v3"))
    out = examples(tick(joiner, 12 * MIN))
    assert len(out) == 1
    ex = out[0]
    assert (ex.label, ex.weight, ex.label_is_default, ex.model_version) == (0.0, 0.5, True, "v3")
    assert ex.feedback_event_id is None
    assert ex.feedback_ts is None
    assert ex.example_id == training_example_id("r1", None)
    assert joiner.stats.defaults == 1


def test_feedback_after_the_window_closed_is_late() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 0))
    feed(joiner, inference("later", 12 * MIN))
    feed(joiner, feedback("later", 12 * MIN, eid="f-later"))
    out = rejects(feed(joiner, feedback("r1", 5 * MIN, eid="f1")))
    assert [r.kind for r in out] == ["late"]
    assert out[0].source.topic == "feedback"
    assert FeedbackEvent.model_validate_json(out[0].value).event_id == "f1"
    assert joiner.stats.late == 1


def test_feedback_beyond_the_attribution_window_is_late_even_within_grace() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 0))
    out = rejects(feed(joiner, feedback("r1", 10 * MIN + 1, eid="f1")))
    assert [r.kind for r in out] == ["late"]


def test_feedback_within_grace_of_disorder_still_joins() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 0))
    feed(joiner, inference("other", 10 * MIN + 30_000))  # watermark ahead by 30 s
    out = examples(feed(joiner, feedback("r1", 9 * MIN, eid="f1")))
    assert len(out) == 1


def test_old_feedback_for_a_forgotten_request_is_late() -> None:
    joiner, _ = make()
    feed(joiner, feedback("now", 100 * MIN, eid="f0"))
    out = rejects(feed(joiner, feedback("gone", 50 * MIN, eid="f1")))
    assert [r.kind for r in out] == ["late"]


def test_feedback_whose_inference_never_comes_is_an_orphan() -> None:
    joiner, store = make()
    feed(joiner, feedback("r1", 0, eid="f1"))
    # it waits for an inference stamped up to a window later, and that one's window
    assert rejects(tick(joiner, 21 * MIN)) == []
    out = rejects(tick(joiner, 21 * MIN + 1))
    assert [r.kind for r in out] == ["orphan"]
    assert joiner.stats.unmatched == 1
    # and closed state is forgotten after its retention
    tick(joiner, 60 * MIN)
    assert store.get("r1") is None


def test_feedback_for_another_model_is_refused() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 0))
    bad = FeedbackEvent.new(event_id="f", request_id="r1", model="other", ts=10, label=1)
    out = rejects(feed(joiner, bad))
    assert [(r.kind, r.field) for r in out] == [("validation", "model")]


def test_too_much_feedback_for_one_request_overflows() -> None:
    joiner, _ = make(feedback_policy="last", max_feedback_per_request=2)
    kinds = [r.kind for i in range(3) for r in rejects(feed(joiner, feedback("r", i, eid=f"f{i}")))]
    assert kinds == ["overflow"]


def test_join_latency_is_the_event_time_feedback_delay_and_wall_time_only_a_metric() -> None:
    now = [1_000]
    store = InMemoryPendingStore()
    joiner = AttributionJoiner(JoinerConfig(), store, clock=lambda: now[0])
    feed(joiner, inference("r1", 10_000))
    now[0] = 1_250
    (ex,) = examples(feed(joiner, feedback("r1", 13_500, eid="f1")))
    assert ex.join_latency_ms == 3_500
    snapshot = joiner.stats.snapshot()
    assert snapshot["feedback_delay_ms"]["max"] == 3_500
    assert snapshot["wall_latency_ms"]["max"] == 250


def test_feedback_stamped_before_its_inference_has_zero_latency() -> None:
    joiner, _ = make()
    feed(joiner, feedback("r1", 900, eid="f1"))
    (ex,) = examples(feed(joiner, inference("r1", 1_000)))
    assert ex.join_latency_ms == 0


def test_a_default_label_has_the_window_close_as_its_latency() -> None:
    joiner, _ = make(no_feedback_policy="default")
    feed(joiner, inference("r1", 1_000))
    (ex,) = examples(tick(joiner, 1_000 + 12 * MIN))
    assert ex.label_is_default
    assert ex.join_latency_ms == ex.ts - 1_000 >= 10 * MIN


def test_the_same_input_gives_byte_identical_examples_whatever_the_wall_clock() -> None:
    events: list[InferenceLog | FeedbackEvent] = [
        inference("r1", 1_000),
        feedback("r2", 2_000, eid="f2"),
        feedback("r1", 4_000, eid="f1"),
        inference("r2", 2_500),
    ]
    runs = []
    for start, step in ((5, 1), (10**12, 60_000)):  # processing fast, or slow and later
        store = InMemoryPendingStore()
        joiner = AttributionJoiner(
            JoinerConfig(), store, clock=itertools.count(start, step).__next__
        )
        runs.append([encode(ex) for e in events for ex in examples(feed(joiner, e))])
    assert len(runs[0]) == 2
    assert runs[0] == runs[1]


def test_windows_close_per_partition() -> None:
    joiner, _ = make(no_feedback_policy="default")
    feed(joiner, inference("r1", 0), p=0)
    assert examples(tick(joiner, 30 * MIN, p=1)) == []
    assert len(examples(tick(joiner, 30 * MIN, p=0))) == 1


def test_stats_render_as_prometheus_text() -> None:
    joiner, _ = make()
    feed(joiner, inference("r1", 0))
    feed(joiner, feedback("r1", 1, eid="f"))
    feed(joiner, feedback("r1", 1, eid="f"))
    text = joiner.stats.prometheus_text()
    assert "driftloop_join_joins_total 1" in text
    assert "driftloop_join_duplicates_total 1" in text
    assert "driftloop_join_pending_inferences 1" in text


@pytest.mark.parametrize("policy", ["first", "last", "sum"])
def test_a_new_owner_of_the_store_carries_on_where_the_old_one_stopped(policy: str) -> None:
    events: list[InferenceLog | FeedbackEvent] = []
    for i in range(20):
        events.append(inference(f"r{i}", i * MIN))
        events.append(feedback(f"r{i}", i * MIN + 30_000, label=i % 2, eid=f"f{i}"))
    clean, _ = make(feedback_policy=policy)
    expected = [e.example_id for ev in events for e in examples(feed(clean, ev))]

    first, store = make(feedback_policy=policy)
    got = [e.example_id for ev in events[:17] for e in examples(feed(first, ev))]
    second = AttributionJoiner(first.config, store, clock=lambda: 5)
    second.rebalance([0])
    assert second.stats.pending_inferences == first.stats.pending_inferences
    got += [e.example_id for ev in events[17:] for e in examples(feed(second, ev))]
    assert got == expected
    assert len(set(got)) == len(got) > 0
