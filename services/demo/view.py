"""What the demo shows while it runs, and the summary it ends with.

:class:`DemoView` folds the records the demo reads back from Kafka
(training examples, dead letters, checkpoint events, the gateway's and the
guard's verdicts, and every pointer change from ``version-events``: the
gateway's promotions, the operator's forced promotion, the guard's rollback)
and what each model server says it serves (live version, applied epoch,
requests answered per version) into counts, and renders them as rich tables
(live on a terminal) or as a JSON-ready summary.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from schemas.events import CheckpointEvent, DeadLetter, TrainingExample, Verdict, VersionEvent
from services.demo.driver import SentCounts
from services.demo.servers import ServerStats
from services.demo.traffic import TrafficSummary


@dataclass(frozen=True)
class PointerChange:
    """One change of the pointer (from ``version-events``), and when the demo read it
    (seconds into the run)."""

    event: VersionEvent
    at_s: float
    trigger: str | None = None
    """The checkpoint trigger of a promoted version (None for the rollback)."""
    examples_seen: int | None = None

    def as_json(self) -> dict[str, Any]:
        e = self.event
        return (
            {
                "epoch": e.epoch,
                "action": e.action,
                "from": e.from_live,
                "to": e.live,
                "actor": e.actor,
                "reason": e.reason,
                "at_s": round(self.at_s, 2),
            }
            | (
                {"canary": e.canary, "canary_percent": e.canary_percent}
                if e.action in ("canary", "clear_canary")
                else {}
            )
            | ({"examples_seen": self.examples_seen} if self.examples_seen is not None else {})
        )


#: Joined examples the view keeps for the poisoned checkpoint.
RECENT = 400


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {
        "judge": v.judge,
        "version": v.version,
        "against": v.baseline_version,
        "decision": v.decision,
        "policy": v.policy,
        "metric": v.metric,
        "candidate": v.candidate,
        "baseline": v.baseline,
        "difference": v.difference,
        "n": v.n,
        "p_value": v.p_value,
        "checks": dict(v.checks),
        "epoch": v.epoch,
        "reason": v.reason,
    }


@dataclass
class DemoView:
    """Running totals of one demo run."""

    traffic: TrafficSummary
    examples: int = 0
    default_labels: int = 0
    example_ids: set[str] = field(default_factory=set)
    repeated_examples: int = 0
    join_latency_ms_total: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    checkpoints: list[CheckpointEvent] = field(default_factory=list)
    sent: SentCounts = field(default_factory=SentCounts)
    servers: list[ServerStats] = field(default_factory=list)
    changes: list[PointerChange] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    recent: deque[TrainingExample] = field(default_factory=lambda: deque(maxlen=RECENT))
    """The newest joined examples (what the poisoned checkpoint is trained on)."""
    poison: dict[str, Any] = field(default_factory=dict)
    """The poisoned checkpoint's story: version, verdict, forced and rolled-back epochs."""
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def enter(self, phase: str) -> None:
        """Show ``phase`` and note when it began (the summary's ``timeline``)."""
        if phase != self.phase:
            self.phase = phase
            self.timeline.append((round(time.monotonic() - self.started, 2), phase))

    def add_example(self, example: TrainingExample) -> None:
        if example.example_id in self.example_ids:
            # At-least-once delivery from the joiner: the trainer drops repeats.
            self.repeated_examples += 1
            return
        self.example_ids.add(example.example_id)
        self.examples += 1
        self.default_labels += example.label_is_default
        self.join_latency_ms_total += example.join_latency_ms
        if not example.label_is_default:
            self.recent.append(example)

    def add_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.error_kind] += 1

    def add_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(event)

    def add_change(self, event: VersionEvent) -> None:
        """A pointer change read from ``version-events`` (a copy relayed twice counts once)."""
        if any(c.event.event_id == event.event_id for c in self.changes):
            return
        checkpoint = next((c for c in self.checkpoints if c.version == event.live), None)
        change = PointerChange(
            event,
            time.monotonic() - self.started,
            trigger=None if checkpoint is None or event.action != "promote" else checkpoint.trigger,
            examples_seen=None if checkpoint is None else checkpoint.examples_seen,
        )
        self.changes.append(change)
        self.changes.sort(key=lambda c: c.event.epoch)

    def add_verdict(self, verdict: Verdict) -> None:
        if all(v.event_id != verdict.event_id for v in self.verdicts):
            self.verdicts.append(verdict)

    def verdict_on(self, version: str, judge: str = "gateway") -> Verdict | None:
        """The newest verdict ``judge`` gave ``version``, if any."""
        mine = [v for v in self.verdicts if v.version == version and v.judge == judge]
        return mine[-1] if mine else None

    @property
    def promotions(self) -> list[PointerChange]:
        return [c for c in self.changes if c.event.action == "promote"]

    @property
    def rollbacks(self) -> list[PointerChange]:
        return [c for c in self.changes if c.event.action == "rollback"]

    @property
    def pointer(self) -> VersionEvent | None:
        """The newest change read: the pointer as it stands (the highest epoch)."""
        return self.changes[-1].event if self.changes else None

    @property
    def converged(self) -> bool:
        """Every server reports the pointer's epoch and serves its live version."""
        p = self.pointer
        return (
            p is not None
            and bool(self.servers)
            and all(s.epoch == p.epoch and s.live == p.live for s in self.servers)
        )

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
            "timeline": [{"at_s": at, "phase": phase} for at, phase in self.timeline],
            "traffic": {
                "requests": self.traffic.requests,
                "feedback": self.traffic.feedback,
                "feedback_before_inference": self.traffic.feedback_first,
                "duplicate_feedback": self.traffic.duplicates,
                "no_feedback": self.traffic.missing,
                "late_feedback": self.traffic.late,
                "malformed": self.traffic.malformed,
                "bootstrap_logs_to_topic": self.sent.warmup_logs,
                "predicted_over_http": self.sent.predicted,
                "feedback_over_http": self.sent.feedback_http,
                "feedback_to_topic": self.sent.feedback_topic,
                "feedback_resent_by_the_other_path": self.sent.repeats,
                "seconds_held_for_the_loop": round(self.sent.held_s, 1),
            },
            "servers": [s.as_json() for s in self.servers],
            "pointer": None
            if self.pointer is None
            else {
                "live": self.pointer.live,
                "canary": self.pointer.canary,
                "canary_percent": self.pointer.canary_percent,
                "epoch": self.pointer.epoch,
            },
            "promotions": [c.as_json() for c in self.promotions],
            "canaries": [
                c.as_json() for c in self.changes if c.event.action in ("canary", "clear_canary")
            ],
            "rollbacks": [c.as_json() for c in self.rollbacks],
            "epochs_converged": self.converged,
            "verdicts": [_verdict_json(v) for v in self.verdicts],
            "unjudged_checkpoints": [
                c.version for c in self.checkpoints if self.verdict_on(c.version) is None
            ],
            "poison": dict(self.poison) if "version" in self.poison else None,
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
        sent = self.sent
        counts.add_row(
            "requests",
            f"{sent.warmup_logs + sent.predicted:,} / {self.traffic.requests:,}"
            f" ({sent.warmup_logs:,} bootstrap logs to the topic, {sent.predicted:,} over HTTP)",
        )
        counts.add_row(
            "feedback",
            f"{sent.feedback_http:,} via POST /v1/feedback, {sent.feedback_topic:,} to the topic",
        )
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

        pointer = self.pointer
        if pointer is not None:
            canary = (
                f" canary={pointer.canary} at {pointer.canary_percent:g}%" if pointer.canary else ""
            )
            counts.add_row("pointer", f"live={pointer.live}{canary} epoch={pointer.epoch}")
        return Group(
            counts,
            self._servers_table(),
            self._changes_table(),
            self._verdicts_table(),
            self._checkpoints_table(),
        )

    def _servers_table(self) -> Table:
        table = Table(title="model servers", expand=False)
        columns = ("server", "port", "live", "epoch", "requests", "routes", "versions served")
        for column in columns:
            table.add_column(column)
        p = self.pointer
        for s in self.servers:
            behind = p is not None and s.epoch != p.epoch
            versions = ", ".join(f"{v[-6:]}:{n}" for v, n in sorted(s.versions.items()))
            routes = ", ".join(f"{r}:{n:,}" for r, n in sorted(s.routes.items()))
            table.add_row(
                s.server_id,
                str(s.port),
                s.live or "-",
                "-" if s.epoch is None else str(s.epoch),
                f"{s.requests:,}",
                routes or "-",
                versions or "-",
                style="yellow" if behind else None,
            )
        return table

    def _changes_table(self) -> Table:
        table = Table(title="pointer changes (version-events)", expand=False)
        for column in ("epoch", "action", "actor", "from", "to", "reason"):
            table.add_column(column)
        for c in self.changes[-8:]:
            e = c.event
            canary = e.action in ("canary", "clear_canary")
            before, after = (e.from_canary, e.canary) if canary else (e.from_live, e.live)
            if e.action == "canary":
                after = f"{e.canary} ({e.canary_percent:g}%)"
            table.add_row(
                str(e.epoch),
                e.action,
                e.actor,
                before or "-",
                after or "-",
                e.reason,
                style="magenta" if e.action == "rollback" else None,
            )
        return table

    def _verdicts_table(self) -> Table:
        table = Table(title="verdicts (gateway and guard)", expand=False)
        for column in ("judge", "version", "decision", "metric", "it", "against", "n", "reason"):
            table.add_column(column)
        styles = {"reject": "red", "rollback": "magenta", "promote": "green"}
        for v in self.verdicts[-8:]:
            table.add_row(
                v.judge,
                v.version,
                v.decision,
                v.metric or "-",
                "-" if v.candidate is None else f"{v.candidate:.4f}",
                "-" if v.baseline is None else f"{v.baseline:.4f} ({v.baseline_version})",
                str(v.n),
                v.reason,
                style=styles.get(v.decision),
            )
        return table

    def _checkpoints_table(self) -> Table:
        table = Table(title="checkpoints", expand=False)
        for column in ("version", "trigger", "step", "examples", "metrics"):
            table.add_column(column)
        for c in self.checkpoints[-8:]:
            style = "red" if c.trigger == "drift" else None
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(c.metrics.items())[:3])
            table.add_row(
                c.version, c.trigger, str(c.step), str(c.examples_seen), shown, style=style
            )
        return table
