"""The demo's traffic plan has the mess it promises, and is repeatable."""

from __future__ import annotations

import pytest

from services.demo.traffic import TrafficConfig, plan

CONFIG = TrafficConfig(requests=3000, drift_at=1500, seed=11)


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    assert plan(CONFIG) == plan(CONFIG)
    other = TrafficConfig(requests=3000, drift_at=1500, seed=12)
    assert plan(CONFIG)[0] != plan(other)[0]


def test_one_request_per_example_with_unique_ids() -> None:
    requests, summary = plan(CONFIG)
    assert [r.index for r in requests] == list(range(3000)) == list(range(summary.requests))
    assert len({r.request_id for r in requests}) == 3000
    feedback = [r.feedback for r in requests if r.feedback is not None]
    assert len({f.event_id for f in feedback}) == len(feedback) == summary.feedback
    assert summary.requests - summary.feedback == summary.missing > 0


def test_feedback_is_messy_as_described() -> None:
    requests, summary = plan(CONFIG)
    feedback = [r.feedback for r in requests if r.feedback is not None]
    lo, hi = CONFIG.feedback_delay_ms
    late = [f for f in feedback if f.late]
    assert len(late) == summary.late > 0
    assert all(f.delay_ms == CONFIG.late_after_ms for f in late)
    assert all(lo <= f.delay_ms <= hi for f in feedback if not f.late)
    # Late feedback only in the first late_tail of the traffic, never repeated or first.
    late_at = [r.index for r in requests if r.feedback is not None and r.feedback.late]
    assert max(late_at) < CONFIG.requests * CONFIG.late_tail
    assert not any(f.before_log or f.repeat_after_ms is not None for f in late)
    assert sum(f.before_log for f in feedback) == summary.feedback_first > 0
    assert sum(f.repeat_after_ms is not None for f in feedback) == summary.duplicates > 0
    # Both paths carry feedback, about half each.
    http = sum(f.via == "http" for f in feedback)
    assert http == summary.feedback_http
    assert summary.feedback_topic == len(feedback) - http
    assert 0.4 < http / len(feedback) < 0.6
    assert sum(r.garbage is not None for r in requests) == summary.malformed > 0


def test_labels_are_inverted_at_the_drift_point() -> None:
    before = plan(TrafficConfig(requests=400, drift_at=400, seed=3))[0]
    after = plan(TrafficConfig(requests=400, drift_at=200, seed=3))[0]
    for b, a in zip(before, after, strict=True):
        assert b.features == a.features
        assert a.label == (b.label if a.index < 200 else not b.label)
        if a.feedback is not None and b.feedback is not None:
            assert a.feedback.label == a.label


@pytest.mark.parametrize("drift_at", [1, 1500, 2999])
def test_drift_point_anywhere_in_the_stream(drift_at: int) -> None:
    _, summary = plan(TrafficConfig(requests=3000, drift_at=drift_at))
    assert summary.requests == 3000
    assert summary.labels.keys() == {"True", "False"}
