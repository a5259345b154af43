"""Shadow logs in the join: kept beside the live log, never a training example.

A model server that mirrors a request to its shadow slot logs two inference
logs for one request: the live (or canary) one and the shadow one
(``route="shadow"``). The joiner keeps one per route; only the live or canary
log makes the example, and the shadow log is neither a duplicate of it nor
dead-lettered when its window closes (it is counted and dropped).
"""

from __future__ import annotations

import itertools
from typing import Any

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog, Route, training_example_id
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    Outcome,
    PendingRequest,
    Reject,
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
    # the window closes: the shadow log is dropped, counted, no dead letter
    closing = tick(joiner, 1_100 + 12 * MIN)
    assert closing == []
    assert joiner.stats.shadows_closed == 1
    entry = store.get("r1")
    assert entry is not None
    assert entry.status == "closed"
    assert entry.closed_shadow_id == "inf-r1-shadow"


def test_a_shadow_log_after_the_live_log_is_no_duplicate_and_no_example() -> None:
    joiner, _ = make(feedback_policy="last")
    assert feed(joiner, log("r1", 1_000, None)) == []  # no route: live
    assert feed(joiner, log("r1", 1_010, "shadow")) == []
    assert feed(joiner, feedback("r1", 3_000, eid="f1")) == []
    [example] = examples(tick(joiner, 1_000 + 12 * MIN))
    assert example.inference_event_id == "inf-r1-None"
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
    tick(joiner, 1_000 + 12 * MIN)  # closed: a shadow alone joined nothing
    assert joiner.stats.shadows_closed == 1
    feed(joiner, feedback("r1", 12 * MIN + 5_000, eid="f1"))
    out = feed(joiner, log("r1", 12 * MIN + 4_000, "live"))
    [example] = examples(out)
    assert example.inference_event_id == "inf-r1-live"


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
