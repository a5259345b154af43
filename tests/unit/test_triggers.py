"""Checkpoint triggers, their combination and the adaptive count schedule."""

from __future__ import annotations

from typing import Any

from services.learning.config import AdaptiveConfig, TriggersConfig
from services.learning.triggers import (
    AdaptiveSchedule,
    EveryInterval,
    EveryN,
    MetricImprovement,
    OnDrift,
    TriggerContext,
    build_triggers,
)


def ctx(**kw: Any) -> TriggerContext:
    base: dict[str, Any] = {
        "examples_seen": 1000,
        "since_checkpoint": 10,
        "now_ms": 0,
        "last_checkpoint_ms": 0,
    }
    return TriggerContext(**(base | kw))


def test_each_trigger_fires_on_its_condition_only() -> None:
    every = EveryN(AdaptiveSchedule(100))
    assert every.check(ctx(since_checkpoint=99)) is None
    assert every.check(ctx(since_checkpoint=100)) is not None
    assert OnDrift().check(ctx()) is None
    assert OnDrift().check(ctx(drift=("0:ADWIN",))) is not None
    interval = EveryInterval(30.0)
    assert interval.check(ctx(now_ms=29_999)) is None
    assert interval.check(ctx(now_ms=30_000)) is not None
    assert interval.check(ctx(now_ms=30_000, since_checkpoint=0)) is None  # nothing new


def test_metric_improvement_respects_direction_threshold_and_warmup() -> None:
    acc = MetricImprovement("accuracy", 0.02, min_examples=500)
    assert acc.check(ctx(metrics={"accuracy": 0.81}, checkpoint_metrics={"accuracy": 0.80})) is None
    fired = acc.check(ctx(metrics={"accuracy": 0.83}, checkpoint_metrics={"accuracy": 0.80}))
    assert fired is not None
    assert fired.trigger == "metric"
    early = ctx(examples_seen=100, metrics={"accuracy": 0.9}, checkpoint_metrics={"accuracy": 0.5})
    assert acc.check(early) is None
    loss = MetricImprovement("log_loss", 0.1, relative=True)
    worse = ctx(metrics={"log_loss": 0.6}, checkpoint_metrics={"log_loss": 0.5})
    better = ctx(metrics={"log_loss": 0.4}, checkpoint_metrics={"log_loss": 0.5})
    assert loss.check(worse) is None
    assert loss.check(better) is not None


def test_combination_names_the_highest_priority_trigger() -> None:
    config = TriggersConfig(every_n=10, interval_s=1.0)
    triggers = build_triggers(config, AdaptiveSchedule(10))
    assert triggers.check(ctx(since_checkpoint=5)) is None
    both = ctx(since_checkpoint=50, now_ms=5000, drift=("0:DDM",))
    decision = triggers.check(both)
    assert decision is not None
    assert decision.trigger == "drift"
    decision = triggers.check(ctx(since_checkpoint=50, shutdown=True, manual="x"))
    assert decision is not None
    assert decision.trigger == "shutdown"
    decision = triggers.check(ctx(since_checkpoint=0, manual="asked"))
    assert decision is not None
    assert (decision.trigger, decision.reason) == ("manual", "asked")


def test_disabled_triggers_never_fire() -> None:
    config = TriggersConfig(every_n=None, on_drift=False, manual=False, on_shutdown=False)
    triggers = build_triggers(config, AdaptiveSchedule(0))
    assert (
        triggers.check(ctx(since_checkpoint=10**6, drift=("x",), manual="m", shutdown=True)) is None
    )


def test_schedule_shrinks_after_drift_and_relaxes_once_settled() -> None:
    schedule = AdaptiveSchedule(1000, AdaptiveConfig(min_every_n=100, shrink=0.25, relax=2.0))
    schedule.on_drift()
    assert schedule.interval == 250
    schedule.on_drift()
    schedule.on_drift()
    assert schedule.interval == 100  # floored at min_every_n
    schedule.on_checkpoint(drifted=True, previous=0.7, current=0.9)
    assert schedule.interval == 100  # still adapting
    schedule.on_checkpoint(drifted=False, previous=0.80, current=0.90)
    assert schedule.interval == 100  # error still moving
    schedule.on_checkpoint(drifted=False, previous=0.900, current=0.905)
    assert schedule.interval == 200
    for _ in range(5):
        schedule.on_checkpoint(drifted=False, previous=0.9, current=0.9)
    assert schedule.interval == 1000  # back to the configured every_n
    assert schedule.describe() == {
        "every_n": 1000,
        "interval": 1000,
        "adaptive": True,
        "shrinks": 2,
        "relaxes": 4,  # 100 -> 200 -> 400 -> 800 -> 1000
    }


def test_fixed_schedule_ignores_drift() -> None:
    schedule = AdaptiveSchedule(500)
    schedule.on_drift()
    assert schedule.interval == 500
