"""The joined set is a function of the events, not of how the two topics interleave.

Guards issue 9 item 1: the joiner reads ``inference-logs`` and ``feedback``
at similar record rates, not in event-time order, so the same two topic
partitions reach it merged in an order that changes from run to run (and
from a run to its replay). With one watermark shared by both topics, a dense
or backlogged topic closed the windows of the other topic's unread records:
which pairs joined depended on the merge. Here the same events (several
requests; feedback in and out of the window, before its inference, twice,
out of order by more than grace; topics of different densities) are fed to
the join in many merges that keep each topic's own order, and every merge
must give the same training examples (bytes) and the same dead letters
(record, kind, reason). No idle release is involved (none is reported).

Some requests also have shadow logs (``route="shadow"``, some twice with
another event_id), on either side of their live or canary log: they must
never make an example nor a dead letter other than ``late``, and the
examples and the other records' dead letters must be those of the same
merge with each shadow log replaced by an inference log of a request nobody
answers (same ``ts``, so the same watermarks): a shadow log changes nothing
but itself. And every merge scores the same shadow logs: the same
ShadowScore bytes, each paired with its request's live answer and the label
of its example with real feedback.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, encode
from schemas.events import FeedbackEvent, InferenceLog, ShadowScore, TrainingExample
from services.attribution import (
    AttributionJoiner,
    Emit,
    InMemoryPendingStore,
    JoinerConfig,
    Reject,
    Scored,
    SourceRef,
)

WINDOW = 10_000
GRACE = 2_000
END = 10**9  # a last record on each topic, far ahead, closes every window


@dataclass(frozen=True)
class Scenario:
    config: JoinerConfig
    inference: list[InferenceLog]  # the inference-logs partition, in topic order
    feedback: list[FeedbackEvent]  # the feedback partition, in topic order


def _topic_order(rng: random.Random, events: list, jitter: int) -> list:
    """Roughly by ts, each displaced by up to ``jitter`` ms (far enough makes
    late ones), then some resent later in the topic (duplicates)."""
    ordered = sorted(events, key=lambda e: (e.ts + rng.randint(-jitter, jitter), e.event_id))
    for event in list(ordered):
        if rng.random() < 0.15:
            ordered.insert(rng.randint(ordered.index(event) + 1, len(ordered)), event)
    return ordered


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    requests = draw(st.integers(1, 8))
    spacing = draw(st.sampled_from([500, 3_000, 8_000]))
    logs: list[InferenceLog] = []
    feedback: list[FeedbackEvent] = []
    for i in range(requests):
        ts = 20_000 + i * spacing + rng.randint(0, spacing)
        if rng.random() < 0.9:  # sometimes the inference never comes
            logs.append(
                InferenceLog.new(
                    event_id=f"inf-{i}",
                    request_id=f"r{i}",
                    model="m",
                    model_version="v1",
                    ts=ts,
                    features={"x": float(i)},
                    prediction=0.5,
                    route=rng.choice([None, "live", "canary"]),
                )
            )
        for k in range(rng.choice([0, 0, 1, 1, 2])):  # the shadow slot's answers
            logs.append(
                InferenceLog.new(
                    event_id=f"shadow-{i}-{k}",
                    request_id=f"r{i}",
                    model="m",
                    model_version="v2",
                    ts=max(0, ts + rng.randint(-GRACE, GRACE)),
                    features={"x": float(i)},
                    prediction=0.7,
                    route="shadow",
                )
            )
        for k in range(rng.choice([0, 0, 1, 1, 2, 3])):
            # mostly in the window; some before the inference (within or beyond
            # a window), some after the window, by up to one more window
            delay = rng.choice(
                [
                    rng.randint(0, WINDOW),
                    rng.randint(-WINDOW // 2, 0),
                    rng.randint(WINDOW, 2 * WINDOW),
                    rng.randint(-2 * WINDOW, -WINDOW),
                ]
            )
            feedback.append(
                FeedbackEvent.new(
                    event_id=f"fb-{i}-{k}",
                    request_id=f"r{i}",
                    model="m",
                    ts=max(0, ts + delay),
                    label=rng.randint(0, 3),
                    weight=float(rng.randint(1, 3)),
                )
            )
    config = JoinerConfig(
        window_ms=WINDOW,
        grace_ms=GRACE,
        feedback_policy=draw(st.sampled_from(["first", "last", "sum"])),
        no_feedback_policy=draw(st.sampled_from(["drop", "default"])),
        closed_retention_ms=draw(st.sampled_from([None, 4 * WINDOW])),
    )
    # displacement within a topic: none, within grace, within a window, beyond
    jitter = draw(st.sampled_from([0, GRACE // 2, 3 * GRACE, 2 * WINDOW]))
    return Scenario(config, _topic_order(rng, logs, jitter), _topic_order(rng, feedback, jitter))


def _merge(scenario: Scenario, rng: random.Random, bias: float) -> list[tuple[str, int]]:
    """One merge of the two topics, each kept in its own order: (topic, offset)."""
    i = f = 0
    order: list[tuple[str, int]] = []
    while i < len(scenario.inference) or f < len(scenario.feedback):
        take_inference = f == len(scenario.feedback) or (
            i < len(scenario.inference) and rng.random() < bias
        )
        if take_inference:
            order.append(("inference-logs", i))
            i += 1
        else:
            order.append(("feedback", f))
            f += 1
    return order


def _without_shadows(scenario: Scenario) -> Scenario:
    """``scenario`` with each shadow log replaced by a log, at the same ts and
    place, of its own request that no feedback answers."""
    logs = [
        log.model_copy(update={"request_id": f"sink-{log.event_id}", "route": None})
        if log.route == "shadow"
        else log
        for log in scenario.inference
    ]
    return Scenario(scenario.config, logs, scenario.feedback)


Joined = tuple[list[bytes], list[tuple], list[bytes]]


def _join(scenario: Scenario, order: list[tuple[str, int]]) -> Joined:
    joiner = AttributionJoiner(scenario.config, InMemoryPendingStore(), clock=lambda: 0)
    outcomes = []
    for topic, offset in order:
        source = SourceRef(topic=topic, partition=0, offset=offset)
        if topic == "inference-logs":
            outcomes += joiner.on_inference(scenario.inference[offset], source)
        else:
            outcomes += joiner.on_feedback(scenario.feedback[offset], source)
    end = len(scenario.inference), len(scenario.feedback)
    closer = InferenceLog.new(
        event_id="end-i", request_id="end-i", model="m", model_version="v1", ts=END,
        features={}, prediction=0,
    )  # fmt: skip
    closer_fb = FeedbackEvent.new(event_id="end-f", request_id="end-f", model="m", ts=END, label=0)
    outcomes += joiner.on_inference(
        closer, SourceRef(topic="inference-logs", partition=0, offset=end[0])
    )
    outcomes += joiner.on_feedback(
        closer_fb, SourceRef(topic="feedback", partition=0, offset=end[1])
    )
    examples = sorted(encode(o.example) for o in outcomes if isinstance(o, Emit))
    letters = sorted(
        (o.source.topic, o.source.offset, o.kind, o.reason)
        for o in outcomes
        if isinstance(o, Reject)
    )
    scores = sorted(encode(o.score) for o in outcomes if isinstance(o, Scored))
    return examples, letters, scores


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), seed=st.integers(0, 2**32 - 1))
def test_every_interleaving_joins_the_same_examples_and_dead_letters_the_same_events(
    scenario: Scenario, seed: int
) -> None:
    rng = random.Random(seed)
    # every log before any feedback, the reverse, and random merges of
    # different densities
    merges = [_merge(scenario, rng, bias) for bias in (1.0, 0.0, 0.5, 0.2, 0.8, 0.5)]
    results = [_join(scenario, order) for order in merges]
    for order, result in zip(merges[1:], results[1:], strict=True):
        assert result == results[0], f"merge {order} differs from {merges[0]}"
    shadows = {offset for offset, log in enumerate(scenario.inference) if log.route == "shadow"}
    examples, letters, scores = results[0]
    # each score pairs a shadow answer with the live answer and a real label
    decoded = [decode(TrainingExample, e) for e in examples]
    by_request = {example.request_id: example for example in decoded}
    for raw in scores:
        score = decode(ShadowScore, raw)
        example = by_request[score.request_id]
        assert not example.label_is_default
        assert (score.label, score.example_id) == (example.label, example.example_id)
        assert (score.prediction, score.live_prediction) == (0.7, 0.5)
        assert score.live_event_id == example.inference_event_id
    assert not any(b'"inference_event_id":"shadow-' in example for example in examples)
    # every example carries its live or canary log's answer, never the shadow's
    assert all(decode(TrainingExample, e).prediction == 0.5 for e in examples)
    for topic, offset, kind, reason in letters:  # a shadow log is dead-lettered only as late
        if topic == "inference-logs" and offset in shadows:
            assert kind == "late", reason
    # a shadow log changes nothing but itself
    sinks = _join(_without_shadows(scenario), merges[0])
    assert sinks[2] == []
    sink_examples = [e for e in sinks[0] if b'"request_id":"sink-' not in e]
    assert examples == sink_examples
    others = [x for x in letters if not (x[0] == "inference-logs" and x[1] in shadows)]
    sink_others = [x for x in sinks[1] if not (x[0] == "inference-logs" and x[1] in shadows)]
    assert others == sink_others
