"""Checkpoint triggers: a small protocol, one class per trigger, combinable.

The trainer builds a :class:`TriggerContext` after every micro-batch (and on
:meth:`OnlineTrainer.tick`) and asks its :class:`AnyOf` combination; the first
trigger that fires, in priority order, names the checkpoint::

    shutdown > config_change > manual > drift > metric > interval > count

The count trigger reads its interval from an :class:`AdaptiveSchedule`: after
a drift the interval shrinks (checkpoint more often while the model adapts)
and relaxes back towards the configured ``every_n`` once the error settles.
The schedule in force is JSON (:meth:`AdaptiveSchedule.describe`) for metrics
and for each manifest's ``extra``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.learning.config import AdaptiveConfig, TriggersConfig
from services.learning.metrics import bigger_is_better


@dataclass(frozen=True)
class TriggerContext:
    """What triggers may look at, as of the end of the last micro-batch."""

    examples_seen: int
    since_checkpoint: int
    now_ms: int
    last_checkpoint_ms: int
    drift: tuple[str, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    checkpoint_metrics: Mapping[str, float] = field(default_factory=dict)
    manual: str | None = None
    shutdown: bool = False
    config_change: bool = False


@dataclass(frozen=True)
class Decision:
    """A checkpoint is due: ``trigger`` is the manifest's trigger name."""

    trigger: str
    reason: str


class Trigger(Protocol):
    """One reason to checkpoint. ``check`` is called after each micro-batch and
    on ticks; it must not change state (the trainer records what happened)."""

    @property
    def name(self) -> str: ...

    def check(self, ctx: TriggerContext) -> Decision | None: ...


class AdaptiveSchedule:
    """The count interval in force: ``every_n``, shrunk after drift, relaxed when settled.

    Without an :class:`AdaptiveConfig` the interval is fixed at ``every_n``.
    """

    def __init__(self, every_n: int, adaptive: AdaptiveConfig | None = None) -> None:
        self.every_n = every_n
        self.adaptive = adaptive
        self.interval = every_n
        self.shrinks = 0
        self.relaxes = 0

    def on_drift(self) -> None:
        """Called once per micro-batch in which a detector fired."""
        if self.adaptive is not None:
            shrunk = max(self.adaptive.min_every_n, int(self.interval * self.adaptive.shrink))
            if shrunk < self.interval:
                self.interval = shrunk
                self.shrinks += 1

    def on_checkpoint(
        self, *, drifted: bool, previous: float | None, current: float | None
    ) -> None:
        """Called after each checkpoint with the key metric then and at the one before.

        Relaxes the interval when no drift was seen since the previous
        checkpoint and the key metric moved by at most ``settle_tolerance``.
        """
        if self.adaptive is None or drifted or self.interval >= self.every_n:
            return
        if previous is None or current is None:
            return
        if abs(current - previous) <= self.adaptive.settle_tolerance:
            relaxed = min(self.every_n, math.ceil(self.interval * self.adaptive.relax))
            if relaxed > self.interval:
                self.interval = relaxed
                self.relaxes += 1

    def describe(self) -> dict[str, Any]:
        """JSON state: interval in force, base, adaptive flag, shrink/relax counts."""
        return {
            "every_n": self.every_n,
            "interval": self.interval,
            "adaptive": self.adaptive is not None,
            "shrinks": self.shrinks,
            "relaxes": self.relaxes,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take back :meth:`describe` from a checkpoint (the interval is clamped
        to the current config's bounds, which may have changed)."""
        low = self.adaptive.min_every_n if self.adaptive else self.every_n
        self.interval = min(self.every_n, max(low, int(state["interval"])))
        self.shrinks = int(state.get("shrinks", 0))
        self.relaxes = int(state.get("relaxes", 0))


@dataclass(frozen=True)
class EveryN:
    """Every ``schedule.interval`` trained examples (the feedback count)."""

    schedule: AdaptiveSchedule
    name: str = "count"

    def check(self, ctx: TriggerContext) -> Decision | None:
        if ctx.since_checkpoint >= self.schedule.interval:
            return Decision("count", f"{ctx.since_checkpoint} examples since the last checkpoint")
        return None


@dataclass(frozen=True)
class OnDrift:
    """When any drift detector fired since the last checkpoint."""

    name: str = "drift"

    def check(self, ctx: TriggerContext) -> Decision | None:
        if ctx.drift and ctx.since_checkpoint > 0:
            return Decision("drift", "drift detected by " + ", ".join(sorted(set(ctx.drift))))
        return None


@dataclass(frozen=True)
class EveryInterval:
    """When ``seconds`` of wall clock passed since the last checkpoint and
    something was trained since."""

    seconds: float
    name: str = "interval"

    def check(self, ctx: TriggerContext) -> Decision | None:
        elapsed = (ctx.now_ms - ctx.last_checkpoint_ms) / 1000.0
        if ctx.since_checkpoint > 0 and elapsed >= self.seconds:
            return Decision("interval", f"{elapsed:.1f}s since the last checkpoint")
        return None


@dataclass(frozen=True)
class MetricImprovement:
    """When ``metric`` improved by ``min_delta`` (absolute, or relative) over its
    value at the last checkpoint, after at least ``min_examples`` examples."""

    metric: str
    min_delta: float
    relative: bool = False
    min_examples: int = 0
    name: str = "metric"

    def check(self, ctx: TriggerContext) -> Decision | None:
        now = ctx.metrics.get(self.metric)
        before = ctx.checkpoint_metrics.get(self.metric)
        if now is None or before is None or ctx.since_checkpoint == 0:
            return None
        if ctx.examples_seen < self.min_examples:
            return None
        gain = now - before if bigger_is_better(self.metric) else before - now
        if self.relative:
            gain = gain / abs(before) if before else math.inf if gain > 0 else 0.0
        if gain >= self.min_delta:
            return Decision("metric", f"{self.metric} {before:.4f} -> {now:.4f}")
        return None


@dataclass(frozen=True)
class OnShutdown:
    """When the trainer is asked to stop (SIGTERM): saves any unsaved progress."""

    name: str = "shutdown"

    def check(self, ctx: TriggerContext) -> Decision | None:
        return Decision("shutdown", "shutting down") if ctx.shutdown else None


@dataclass(frozen=True)
class OnManualRequest:
    """When an operator asked for a checkpoint."""

    name: str = "manual"

    def check(self, ctx: TriggerContext) -> Decision | None:
        return Decision("manual", ctx.manual) if ctx.manual is not None else None


@dataclass(frozen=True)
class OnConfigChange:
    """Before new settings apply: the old settings' state is saved first."""

    name: str = "config_change"

    def check(self, ctx: TriggerContext) -> Decision | None:
        if ctx.config_change:
            return Decision("config_change", "configuration changed")
        return None


_PRIORITY = ("shutdown", "config_change", "manual", "drift", "metric", "interval", "count")


@dataclass(frozen=True)
class AnyOf:
    """Fires when any of ``triggers`` fires; the highest-priority one names it."""

    triggers: Sequence[Trigger]
    name: str = "any"

    def check(self, ctx: TriggerContext) -> Decision | None:
        decisions = [d for t in self.triggers if (d := t.check(ctx)) is not None]
        if not decisions:
            return None
        return min(decisions, key=lambda d: _PRIORITY.index(d.trigger))


def build_triggers(config: TriggersConfig, schedule: AdaptiveSchedule) -> AnyOf:
    """The combination ``config`` switches on, counting on ``schedule``."""
    triggers: list[Trigger] = []
    if config.every_n is not None:
        triggers.append(EveryN(schedule))
    if config.on_drift:
        triggers.append(OnDrift())
    if config.interval_s is not None:
        triggers.append(EveryInterval(config.interval_s))
    if config.metric is not None:
        m = config.metric
        triggers.append(MetricImprovement(m.metric, m.min_delta, m.relative, m.min_examples))
    if config.on_shutdown:
        triggers.append(OnShutdown())
    if config.manual:
        triggers.append(OnManualRequest())
    if config.on_config_change:
        triggers.append(OnConfigChange())
    return AnyOf(tuple(triggers))
