"""Counters and gauges of the attribution joiner, for the demo and ``/metrics``.

:class:`JoinStats` is a plain object the joiner updates as it goes; the agent
exposes :meth:`JoinStats.snapshot` (a JSON-ready dict) and
:meth:`JoinStats.prometheus_text` (the Prometheus text format, so no client
library is needed).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LatencyStats:
    """Count, sum, max and recent quantiles of one latency, in ms."""

    count: int = 0
    sum_ms: int = 0
    max_ms: int = 0
    recent_ms: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def record(self, latency_ms: int) -> None:
        self.count += 1
        self.sum_ms += latency_ms
        self.max_ms = max(self.max_ms, latency_ms)
        self.recent_ms.append(latency_ms)

    def quantile(self, q: float) -> int | None:
        """The ``q`` quantile of the last 4096 values, or None before any."""
        if not self.recent_ms:
            return None
        ordered = sorted(self.recent_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.sum_ms / self.count if self.count else None,
            "max": self.max_ms if self.count else None,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
        }


@dataclass
class JoinStats:
    """What the joiner did since it started (per process).

    Counters: ``inferences`` and ``feedback`` read and decoded; ``joins``
    (examples emitted with a real label); ``defaults`` (examples emitted with
    the default label); ``dropped_unlabeled`` (windows closed without
    feedback, dropped); ``late`` (feedback after its window closed);
    ``duplicates`` (an ``event_id`` seen again); ``superseded`` (feedback
    ignored because ``first`` already emitted); ``unmatched`` (feedback whose
    inference never came); ``shadow_logs`` (shadow inference logs kept for
    a request, never joined) and ``shadows_closed`` (those dropped, without a
    dead letter, when their request's window closed or because it had
    closed); ``shadow_scores`` (of those, the ones scored: a ShadowScore
    emitted); ``idle_releases`` (an idle input partition left out
    of its partition's closing watermark, see
    :mod:`services.attribution.expiry`); ``forwarded`` (records read on another
    partition than their request's join partition, sent on through the
    repartition topic, :mod:`services.attribution.routing`); ``rewinds`` (an
    input partition found committed past the offset the join state accounts
    for, at an assignment, and read again from there: each one is a record
    that would have been lost, see ``streams/joiner.py``); ``skips`` (a
    record delivered past that offset while the worker ran: the records
    between were skipped on their way to the join, and are read again);
    ``dead_letters`` by ``error_kind``.
    Gauges: ``pending_inferences`` and ``pending_feedback`` (open requests
    waiting with an inference log, shadow logs included / with feedback
    only) and ``closed_remembered``.
    Latencies of every emitted example, in ms: ``feedback_delay`` in event
    time (the example's ``join_latency_ms``: feedback ``ts`` minus inference
    ``ts``, or the window close for a default label) and ``wall_latency``, the
    wall-clock time from the first half of the pair reaching this process to
    the example (depends on when records are processed, so it is only a
    metric, never part of an example).
    """

    inferences: int = 0
    feedback: int = 0
    joins: int = 0
    defaults: int = 0
    dropped_unlabeled: int = 0
    late: int = 0
    duplicates: int = 0
    superseded: int = 0
    unmatched: int = 0
    shadow_logs: int = 0
    shadows_closed: int = 0
    shadow_scores: int = 0
    idle_releases: int = 0
    forwarded: int = 0
    rewinds: int = 0
    skips: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    pending_inferences: int = 0
    pending_feedback: int = 0
    closed_remembered: int = 0
    feedback_delay: LatencyStats = field(default_factory=LatencyStats)
    wall_latency: LatencyStats = field(default_factory=LatencyStats)

    def record_join(self, feedback_delay_ms: int, wall_latency_ms: int) -> None:
        """Count the latencies of one emitted example."""
        self.feedback_delay.record(feedback_delay_ms)
        self.wall_latency.record(wall_latency_ms)

    def snapshot(self) -> dict[str, Any]:
        """Every counter and gauge as a JSON-ready dict."""
        return {
            "inferences": self.inferences,
            "feedback": self.feedback,
            "joins": self.joins,
            "defaults": self.defaults,
            "dropped_unlabeled": self.dropped_unlabeled,
            "late": self.late,
            "duplicates": self.duplicates,
            "superseded": self.superseded,
            "unmatched": self.unmatched,
            "shadow_logs": self.shadow_logs,
            "shadows_closed": self.shadows_closed,
            "shadow_scores": self.shadow_scores,
            "idle_releases": self.idle_releases,
            "forwarded": self.forwarded,
            "rewinds": self.rewinds,
            "skips": self.skips,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "dead_letters_total": sum(self.dead_letters.values()),
            "pending_inferences": self.pending_inferences,
            "pending_feedback": self.pending_feedback,
            "closed_remembered": self.closed_remembered,
            "feedback_delay_ms": self.feedback_delay.snapshot(),
            "wall_latency_ms": self.wall_latency.snapshot(),
        }

    def prometheus_text(self, prefix: str = "driftloop_join") -> str:
        """The counters and gauges in the Prometheus text exposition format."""
        lines: list[str] = []

        def metric(name: str, kind: str, value: float, labels: str = "") -> None:
            full = f"{prefix}_{name}"
            if not any(line.startswith(f"# TYPE {full} ") for line in lines):
                lines.append(f"# TYPE {full} {kind}")
            lines.append(f"{full}{labels} {value}")

        for name in (
            "inferences",
            "feedback",
            "joins",
            "defaults",
            "dropped_unlabeled",
            "late",
            "duplicates",
            "superseded",
            "unmatched",
            "shadow_logs",
            "shadows_closed",
            "shadow_scores",
            "idle_releases",
            "forwarded",
            "rewinds",
            "skips",
        ):
            metric(f"{name}_total", "counter", getattr(self, name))
        for kind, count in sorted(self.dead_letters.items()):
            metric("dead_letters_total", "counter", count, f'{{error_kind="{kind}"}}')
        for name in ("pending_inferences", "pending_feedback", "closed_remembered"):
            metric(name, "gauge", getattr(self, name))
        for name, latency in (
            ("feedback_delay_ms", self.feedback_delay),
            ("wall_latency_ms", self.wall_latency),
        ):
            metric(f"{name}_count", "counter", latency.count)
            metric(f"{name}_sum", "counter", latency.sum_ms)
        return "\n".join(lines) + "\n"
