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
class JoinStats:
    """What the joiner did since it started (per process).

    Counters: ``inferences`` and ``feedback`` read and decoded; ``joins``
    (examples emitted with a real label); ``defaults`` (examples emitted with
    the default label); ``dropped_unlabeled`` (windows closed without
    feedback, dropped); ``late`` (feedback after its window closed);
    ``duplicates`` (an ``event_id`` seen again); ``superseded`` (feedback
    ignored because ``first`` already emitted); ``unmatched`` (feedback whose
    inference never came); ``dead_letters`` by ``error_kind``.
    Gauges: ``pending_inferences`` and ``pending_feedback`` (open requests
    waiting with an inference / with feedback only) and ``closed_remembered``.
    Join latency: feedback ``ts`` minus inference ``ts`` of each join, in ms.
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
    dead_letters: Counter[str] = field(default_factory=Counter)
    pending_inferences: int = 0
    pending_feedback: int = 0
    closed_remembered: int = 0
    latency_count: int = 0
    latency_sum_ms: int = 0
    latency_max_ms: int = 0
    recent_latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def record_latency(self, latency_ms: int) -> None:
        self.latency_count += 1
        self.latency_sum_ms += latency_ms
        self.latency_max_ms = max(self.latency_max_ms, latency_ms)
        self.recent_latencies_ms.append(latency_ms)

    def latency_quantile(self, q: float) -> int | None:
        """The ``q`` quantile of the last 4096 join latencies, or None before any join."""
        if not self.recent_latencies_ms:
            return None
        ordered = sorted(self.recent_latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, Any]:
        """Every counter and gauge as a JSON-ready dict."""
        mean = self.latency_sum_ms / self.latency_count if self.latency_count else None
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
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "dead_letters_total": sum(self.dead_letters.values()),
            "pending_inferences": self.pending_inferences,
            "pending_feedback": self.pending_feedback,
            "closed_remembered": self.closed_remembered,
            "join_latency_ms": {
                "count": self.latency_count,
                "mean": mean,
                "max": self.latency_max_ms if self.latency_count else None,
                "p50": self.latency_quantile(0.5),
                "p99": self.latency_quantile(0.99),
            },
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
        ):
            metric(f"{name}_total", "counter", getattr(self, name))
        for kind, count in sorted(self.dead_letters.items()):
            metric("dead_letters_total", "counter", count, f'{{error_kind="{kind}"}}')
        for name in ("pending_inferences", "pending_feedback", "closed_remembered"):
            metric(name, "gauge", getattr(self, name))
        metric("latency_ms_count", "counter", self.latency_count)
        metric("latency_ms_sum", "counter", self.latency_sum_ms)
        return "\n".join(lines) + "\n"
