"""What the demo shows while it runs, and the summary it ends with.

:class:`DemoView` folds the records the demo reads back from Kafka
(training examples, dead letters, checkpoint events) into counts, and renders
them as a rich table (live on a terminal) or as a JSON-ready summary.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from schemas.events import CheckpointEvent, DeadLetter, TrainingExample
from services.demo.traffic import TrafficSummary


@dataclass
class DemoView:
    """Running totals of one demo run."""

    traffic: TrafficSummary
    produced: int = 0
    examples: int = 0
    default_labels: int = 0
    example_ids: set[str] = field(default_factory=set)
    repeated_examples: int = 0
    join_latency_ms_total: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    checkpoints: list[CheckpointEvent] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"

    def add_example(self, example: TrainingExample) -> None:
        if example.example_id in self.example_ids:
            # At-least-once delivery from the joiner: the trainer drops repeats.
            self.repeated_examples += 1
            return
        self.example_ids.add(example.example_id)
        self.examples += 1
        self.default_labels += example.label_is_default
        self.join_latency_ms_total += example.join_latency_ms

    def add_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.error_kind] += 1

    def add_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)

    @property
    def drift_checkpoints(self) -> list[CheckpointEvent]:
        return [c for c in self.checkpoints if c.trigger == "drift"]

    @property
    def latest_metrics(self) -> dict[str, float]:
        return dict(self.checkpoints[-1].metrics) if self.checkpoints else {}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the run."""
        last = self.checkpoints[-1] if self.checkpoints else None
        return {
            "seconds": round(time.monotonic() - self.started, 2),
            "traffic": {
                "requests": self.traffic.requests,
                "feedback": self.traffic.feedback,
                "feedback_before_inference": self.traffic.feedback_first,
                "duplicate_feedback": self.traffic.duplicates,
                "no_feedback": self.traffic.missing,
                "late_feedback": self.traffic.late,
                "malformed": self.traffic.malformed,
                "records_produced": self.produced,
            },
            "joined_examples": self.examples,
            "default_label_examples": self.default_labels,
            "repeated_examples_seen_downstream": self.repeated_examples,
            "mean_join_latency_ms": (
                round(self.join_latency_ms_total / self.examples, 1) if self.examples else None
            ),
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "checkpoints": [
                {
                    "version": c.version,
                    "trigger": c.trigger,
                    "step": c.step,
                    "examples_seen": c.examples_seen,
                    "metrics": c.metrics,
                }
                for c in self.checkpoints
            ],
            "drift_checkpoints": [c.version for c in self.drift_checkpoints],
            "final": None
            if last is None
            else {"version": last.version, "examples_seen": last.examples_seen}
            | {"metrics": last.metrics},
        }

    def render(self) -> Group:
        """The live panel: counters, then the newest checkpoints."""
        elapsed = time.monotonic() - self.started
        counts = Table.grid(padding=(0, 2))
        counts.add_column(style="bold")
        counts.add_column()
        counts.add_row("phase", self.phase)
        counts.add_row("elapsed", f"{elapsed:6.1f} s")
        counts.add_row("produced", f"{self.produced:,} / {self.traffic.records:,} records")
        joined = f"{self.examples:,} examples ({self.default_labels} default-label)"
        counts.add_row("joined", joined)
        dead = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items())) or "none"
        counts.add_row("dead letters", dead)
        metrics = self.latest_metrics
        if metrics:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            counts.add_row("prequential", shown)
        drift = self.drift_checkpoints
        drift_text = Text(str(len(drift)), style="bold red" if drift else "")
        counts.add_row("drift detections", drift_text)

        table = Table(title="checkpoints", expand=False)
        for column in ("version", "trigger", "step", "examples", "metrics"):
            table.add_column(column)
        for c in self.checkpoints[-12:]:
            style = "red" if c.trigger == "drift" else None
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items())[:3])
            table.add_row(
                c.version, c.trigger, str(c.step), str(c.examples_seen), shown, style=style
            )
        return Group(counts, table)
