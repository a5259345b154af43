"""Shadow logs in the join: kept beside the live log, never a training example, scored.

A model server that mirrors a request to its shadow slot logs two inference
logs for one request: the live (or canary) one and the shadow one
(``route="shadow"``). The joiner keeps one per route; only the live or canary
log makes the example, and the shadow log is neither a duplicate of it nor
dead-lettered when its window closes: it is scored then (a ShadowScore with
the live answer and the example's label), when the request had real feedback.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schemas.codec import encode
from schemas.events import (
    FeedbackEvent,
    InferenceLog,
    Route,
    ShadowScore,
    shadow_score_id,
    training_example_id,
)
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    Outcome,
    PendingRequest,
    Reject,
    Scored,
    SourceRef,
)

MIN = 60_000
_offsets = itertools.count()


def log(rid: str, ts: int, route: Route | None, *, eid: str | None = None) -> InferenceLog:
    return InferenceLog.new(
        event_id=eid or f"inf-{rid}-{route}",
        request_id=rid,
        model="ctr",
        model_version="v-shadow" if route == "shadow" else "v-live",
        ts=ts,
        features={"x": 1.5},
        prediction=0.9 if route == "shadow" else 0.3,
        route=route,
    )


def feedback(rid: str, ts: int, *, eid: str, label: Any = 1) -> FeedbackEvent:
    return FeedbackEvent.new(event_id=eid, request_id=rid, model="ctr", ts=ts, label=label)


def make(**settings: Any) -> tuple[AttributionJoiner, InMemoryPendingStore]:
    store = InMemoryPendingStore()
    config = JoinerConfig(window_ms=10 * MIN, grace_ms=1 * MIN, **settings)
    return AttributionJoiner(config, store, clock=lambda: 5), store


def feed(joiner: AttributionJoiner, event: InferenceLog | FeedbackEvent) -> list[Outcome]:
    if isinstance(event, InferenceLog):
        return joiner.on_inference(
            event, SourceRef(topic="logs", partition=0, offset=next(_offsets))
        )
    return joiner.on_feedback(event, SourceRef(topic="fb", partition=0, offset=next(_offsets)))


def tick(joiner: AttributionJoiner, ts: int) -> list[Outcome]:
    return joiner.advance(0, ts, "inference") + joiner.advance(0, ts, "feedback")


def examples(outcomes: list[Outcome]) -> list[Any]:
    return [o.example for o in outcomes if isinstance(o, Emit)]


def rejects(outcomes: list[Outcome]) -> list[Reject]:
    return [o for o in outcomes if isinstance(o, Reject)]


def scores(outcomes: list[Outcome]) -> list[ShadowScore]:
    return [o.score for o in outcomes if isinstance(o, Scored)]


def test_shadow_log_and_feedback_before_the_live_log_join_the_live_log() -> None:
    """The issue's case: the live log comes last and still makes the example."""
    joiner, store = make()
    assert feed(joiner, log("r1", 1_000, "shadow")) == []
    assert feed(joiner, feedback("r1", 4_000, eid="f1")) == []
    out = feed(joiner, log("r1", 1_100, "live"))
    assert rejects(out) == []
    [example] = examples(out)
    assert example.inference_event_id == "inf-r1-live"
    assert example.model_version == "v-live"
    assert example.example_id == training_example_id("r1", "f1")
    assert joiner.stats.duplicates == 0
    assert joiner.stats.shadow_logs == 1
    # the window closes: the shadow log is scored, counted, no dead letter
    closing = tick(joiner, 1_100 + 12 * MIN)
    [score] = scores(closing)
    assert closing == [Scored(score)]
    assert score.event_id == shadow_score_id("r1", "inf-r1-shadow")
    assert score.ts == 1_100 + 11 * MIN  # the window's end: event time
    assert (score.model, score.model_version, score.prediction) == ("ctr", "v-shadow", 0.9)
    assert (score.label, score.example_id) == (1, example.example_id)
    assert (score.live_version, score.live_route, score.live_prediction) == ("v-live", "live", 0.3)
    assert (score.live_event_id, score.live_ts) == ("inf-r1-live", 1_100)
    assert joiner.stats.shadows_closed == 1
    assert joiner.stats.shadow_scores == 1
    entry = store.get("r1")
    assert entry is not None
    assert entry.status == "closed"
    assert entry.closed_shadow_id == "inf-r1-shadow"


def test_a_shadow_log_after_the_live_log_is_no_duplicate_and_no_example() -> None:
    joiner, _ = make(feedback_policy="last")
    assert feed(joiner, log("r1", 1_000, None)) == []  # no route: live
    assert feed(joiner, log("r1", 1_010, "shadow")) == []
    assert feed(joiner, feedback("r1", 3_000, eid="f1")) == []
    closing = tick(joiner, 1_000 + 12 * MIN)
    [example] = examples(closing)
    assert example.inference_event_id == "inf-r1-None"
    [score] = scores(closing)  # the label decided at the close, the live log without a route
    assert (score.label, score.live_route, score.example_id) == (1, None, example.example_id)
    assert joiner.stats.dead_letters == {}
    assert joiner.stats.shadows_closed == 1


def test_a_canary_log_makes_the_example_like_a_live_one() -> None:
    joiner, _ = make()
    feed(joiner, log("r1", 1_000, "shadow"))
    feed(joiner, log("r1", 1_000, "canary"))
    [example] = examples(feed(joiner, feedback("r1", 2_000, eid="f1")))
    assert example.inference_event_id == "inf-r1-canary"


def test_a_shadow_log_alone_never_makes_an_example_even_with_a_default_label() -> None:
    joiner, _ = make(no_feedback_policy="default")
    assert feed(joiner, log("r1", 1_000, "shadow")) == []
    out = feed(joiner, feedback("r1", 2_000, eid="f1"))
    assert out == []  # waits for its live log, which never comes
    closing = tick(joiner, 1_000 + 30 * MIN)
    assert examples(closing) == []
    assert [(r.kind, r.value) for r in rejects(closing)] == [
        ("orphan", encode(feedback("r1", 2_000, eid="f1")))
    ]
    assert joiner.stats.shadows_closed == 1
    assert joiner.stats.defaults == 0


def test_a_live_log_after_a_closed_shadow_only_request_still_joins() -> None:
    joiner, _ = make()
    feed(joiner, log("r1", 1_000, "shadow"))
    # a shadow alone waits for its live log as feedback does: 2 windows + grace
    tick(joiner, 1_000 + 21 * MIN)
    assert joiner.stats.shadows_closed == 0
    tick(joiner, 1_000 + 21 * MIN + 1)  # closed: a shadow alone joined nothing
    assert joiner.stats.shadows_closed == 1
    feed(joiner, feedback("r1", 21 * MIN + 5_000, eid="f1"))
    out = feed(joiner, log("r1", 21 * MIN + 4_000, "live"))
    [example] = examples(out)
    assert example.inference_event_id == "inf-r1-live"
    assert scores(tick(joiner, 40 * MIN)) == []  # its shadow log was dropped


def test_a_shadow_log_after_its_window_closed_is_dropped_without_a_dead_letter() -> None:
    joiner, store = make()
    feed(joiner, log("r1", 1_000, "live"))
    feed(joiner, feedback("r1", 2_000, eid="f1"))
    tick(joiner, 1_000 + 11 * MIN + 1)
    assert feed(joiner, log("r1", 1_000 + 11 * MIN, "shadow")) == []
    assert joiner.stats.shadows_closed == 1
    entry = store.get("r1")
    assert entry is not None
    assert entry.closed_shadow_id == "inf-r1-shadow"


def test_a_second_shadow_log_is_dropped_without_a_dead_letter_open_or_closed() -> None:
    joiner, store = make()
    feed(joiner, log("r1", 1_000, "live"))
    feed(joiner, log("r1", 1_000, "shadow", eid="s1"))
    assert feed(joiner, log("r1", 1_001, "shadow", eid="s2")) == []
    entry = store.get("r1")
    assert entry is not None
    assert entry.shadow is not None
    assert entry.shadow.event_id == "s1"  # one per route: the first is kept
    tick(joiner, 1_000 + 12 * MIN)
    assert feed(joiner, log("r1", 1_000 + 11 * MIN, "shadow", eid="s3")) == []
    assert joiner.stats.dead_letters == {}
    assert joiner.stats.shadow_logs == 3
    assert joiner.stats.shadows_closed == 3


def test_a_repeated_shadow_log_is_a_repeat_not_a_second_log() -> None:
    joiner, _ = make()
    shadow = log("r1", 1_000, "shadow")
    feed(joiner, shadow)
    assert feed(joiner, shadow) == []
    assert joiner.stats.duplicates == 1
    assert joiner.stats.shadow_logs == 1


def test_a_second_live_log_is_still_a_duplicate() -> None:
    joiner, _ = make()
    feed(joiner, log("r1", 1_000, "shadow"))
    feed(joiner, log("r1", 1_000, "live"))
    [dup] = rejects(feed(joiner, log("r1", 1_000, "canary")))
    assert (dup.kind, dup.field) == ("duplicate", "request_id")


def test_entries_written_before_shadow_logs_were_kept_read_unchanged() -> None:
    old = b'{"request_id":"r1","partition":0,"deadline":5,"seen_event_ids":["a"]}'
    entry = PendingRequest.from_bytes(old)
    assert entry.shadow is None
    assert entry.closed_shadow_id is None
    assert entry.to_bytes() == old  # and entries without a shadow write as before


def _scored(rid: str, ts: int, route: Route | None, prediction: Any, scores: Any) -> InferenceLog:
    return log(rid, ts, route).model_copy(update={"prediction": prediction, "scores": scores})


def test_an_example_carries_the_route_prediction_and_scores_of_its_log() -> None:
    joiner, _ = make()
    feed(joiner, _scored("r1", 1_000, "shadow", False, {"true": 0.1, "false": 0.9}))
    feed(joiner, _scored("r1", 1_000, "canary", True, {"true": 0.8, "false": 0.2}))
    [example] = examples(feed(joiner, feedback("r1", 2_000, eid="f1")))
    assert (example.route, example.prediction) == ("canary", True)
    assert example.scores == {"true": 0.8, "false": 0.2}
    # a log with no route or scores gives an example without them
    feed(joiner, log("r2", 1_000, None))
    [plain] = examples(feed(joiner, feedback("r2", 2_000, eid="f2")))
    assert (plain.route, plain.prediction, plain.scores) == (None, 0.3, None)


def test_a_default_label_example_carries_its_logs_serving_fields_too() -> None:
    joiner, _ = make(no_feedback_policy="default", default_label=0)
    feed(joiner, _scored("r1", 1_000, "live", 0.25, None))
    feed(joiner, _scored("r1", 1_000, "shadow", 0.75, None))
    [example] = examples(tick(joiner, 1_000 + 12 * MIN))
    assert example.label_is_default
    assert (example.route, example.prediction, example.scores) == ("live", 0.25, None)


def test_a_shadow_log_after_the_example_was_emitted_is_scored_with_its_label() -> None:
    """``first`` emits at the match; the label is kept for the shadow until the close."""
    joiner, store = make(feedback_policy="first")
    feed(joiner, log("r1", 1_000, "live"))
    [example] = examples(feed(joiner, feedback("r1", 2_000, eid="f1", label=0)))
    feed(joiner, feedback("r1", 2_500, eid="f2", label=1))  # superseded: not the label
    assert feed(joiner, log("r1", 1_200, "shadow")) == []
    entry = store.get("r1")
    assert entry is not None
    assert (entry.status, entry.example_label) == ("emitted", 0)
    [score] = scores(tick(joiner, 1_000 + 12 * MIN))
    assert (score.label, score.example_id) == (0, example.example_id)
    closed = store.get("r1")
    assert closed is not None
    assert closed.example_label is None  # a tombstone keeps ids only


@pytest.mark.parametrize("no_feedback_policy", ["drop", "default"])
def test_no_shadow_score_without_a_real_label(no_feedback_policy: str) -> None:
    joiner, _ = make(no_feedback_policy=no_feedback_policy, default_label=0)
    feed(joiner, log("r1", 1_000, "live"))
    feed(joiner, log("r1", 1_000, "shadow"))
    closing = tick(joiner, 1_000 + 12 * MIN)
    assert scores(closing) == []
    assert [e.label_is_default for e in examples(closing)] == (
        [True] if no_feedback_policy == "default" else []
    )
    assert (joiner.stats.shadows_closed, joiner.stats.shadow_scores) == (1, 0)


def test_two_shadow_logs_read_in_time_score_neither() -> None:
    joiner, _ = make()
    feed(joiner, log("r1", 1_000, "live"))
    feed(joiner, feedback("r1", 2_000, eid="f1"))
    feed(joiner, log("r1", 1_000, "shadow", eid="s1"))
    feed(joiner, log("r1", 1_001, "shadow", eid="s2"))
    assert scores(tick(joiner, 1_000 + 12 * MIN)) == []


def test_a_shadow_log_read_after_its_input_passed_the_window_end_is_not_scored() -> None:
    """Read when its own topic partition was past ``live.ts + window + grace``:
    whether the window had closed then depends on the other topic's pace, so
    it never counts, even though here the window is still open."""
    joiner, _ = make(feedback_policy="last")
    feed(joiner, log("r1", 1_000, "live"))
    feed(joiner, feedback("r1", 2_000, eid="f1"))  # the feedback partition stays at 2 s
    feed(joiner, log("r2", 1_000 + 11 * MIN + 5, "live"))
    entry_open = feed(joiner, log("r1", 1_000 + 11 * MIN, "shadow"))  # 5 ms behind: not late
    assert entry_open == []
    closing = tick(joiner, 1_000 + 12 * MIN)
    assert [e.request_id for e in examples(closing)] == ["r1"]
    assert scores(closing) == []
    assert joiner.stats.dead_letters == {}


def test_a_shadow_log_beyond_a_window_from_its_live_log_is_not_scored() -> None:
    joiner, _ = make()
    feed(joiner, log("r1", 12 * MIN, "live"))
    feed(joiner, log("r1", 1 * MIN, "shadow"))  # 11 minutes before it
    feed(joiner, feedback("r1", 12 * MIN + 1_000, eid="f1"))
    assert scores(tick(joiner, 24 * MIN)) == []


def _records() -> list[InferenceLog | FeedbackEvent]:
    return [
        _scored("r1", 1_000, "shadow", True, {"true": 0.7, "false": 0.3}),
        feedback("r1", 3_000, eid="f1", label=True),
        _scored("r1", 1_050, "live", False, {"true": 0.4, "false": 0.6}),
        _scored("r2", 2_000, "canary", True, None),
        feedback("r2", 2_500, eid="f2", label=False),
        _scored("r2", 2_100, "shadow", False, None),
    ]


def _scores_of(records: list[InferenceLog | FeedbackEvent]) -> list[bytes]:
    joiner, _ = make(feedback_policy="last")
    out: list[Outcome] = []
    for record in records:
        out += feed(joiner, record)
    out += tick(joiner, 1_000 + 12 * MIN)
    return sorted(encode(score) for score in scores(out))


def test_a_replay_scores_byte_for_byte_the_same_and_repeats_add_nothing() -> None:
    first = _scores_of(_records())
    assert len(first) == 2
    assert _scores_of(_records()) == first  # a replay on a fresh joiner
    assert _scores_of(list(reversed(_records()))) == first  # another read order
    # the same records read twice in one joiner (a replay after a take-over)
    assert _scores_of(_records() + _records()) == first
