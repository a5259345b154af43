"""The attribution join: inference logs + feedback -> training examples.

:class:`AttributionJoiner` is plain, synchronous logic over a
:class:`~services.attribution.state.PendingStore`; the faust agent in
``streams/joiner.py`` decodes records, calls :meth:`AttributionJoiner.on_inference`
or :meth:`AttributionJoiner.on_feedback`, and sends what comes back.

Rules (``JoinerConfig`` names the knobs):

- Either side may come first; both wait in the store under their request_id.
- Each record first advances its partition's event-time watermark (see
  :mod:`services.attribution.expiry`) and closes every window now due.
- A repeated ``event_id`` is a duplicate: counted, never joined twice.
- Feedback is attributed when ``inference.ts <= ... <= inference.ts + window``
  (earlier feedback, from clock skew, is accepted); feedback after its window
  or after its request was closed is ``late`` and goes to dead-letters.
- ``feedback_policy="first"`` emits at the first match; ``"last"`` and
  ``"sum"`` emit when the window closes (watermark past
  ``inference.ts + window + grace``), because a later event may still change
  the label. ``last`` takes the feedback with the greatest ``(ts, event_id)``;
  ``sum`` adds the labels (booleans count 0/1), averages the weights and is
  attributed to the earliest feedback, so more feedback arriving later does
  not change its example_id.
- A window closing without feedback is dropped or emitted with the default
  label (``label_is_default``), per ``no_feedback_policy``.
- Feedback whose inference never came is dead-lettered as ``orphan`` when
  its own window (from its ``ts``) closes.
- ``example_id = training_example_id(request_id, feedback_event_id)``; the
  example's ``event_id`` is the example_id and its ``ts`` the watermark at
  emission, so a replay emits byte-for-byte the same example.
- ``join_latency_ms`` is event time too: feedback ``ts`` minus inference
  ``ts``, clamped at 0 (the feedback delay, part of the loop's latency); for a
  default label, the example's ``ts`` minus inference ``ts`` (when the window
  closed). The wall-clock time from the first half reaching the joiner to the
  example is only a metric (:attr:`JoinStats.wall_latency`).

Where duplicates can still arise: the agent sends an example, then dies
before the store write and the input offset are committed. The replacement
replays those records and emits the same example again, with the same
example_id; the trainer drops it by example_id.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog, TrainingExample, training_example_id
from services.attribution.config import JoinerConfig
from services.attribution.expiry import ExpiryIndex, Watermarks
from services.attribution.state import (
    PendingFeedback,
    PendingRequest,
    PendingStore,
    SourceRef,
)
from services.attribution.stats import JoinStats


@dataclass(frozen=True)
class Emit:
    """A training example to send to ``training-examples`` (key: its model)."""

    example: TrainingExample


@dataclass(frozen=True)
class Reject:
    """An input the joiner refuses; the agent writes it to ``dead-letters``.

    ``value`` is the event's encoded bytes and ``key`` its request_id, as on
    the source topic; ``kind`` is the DeadLetter ``error_kind``.
    """

    kind: str
    reason: str
    source: SourceRef
    key: bytes
    value: bytes
    field: str | None = None


Outcome = Emit | Reject


def _number(label: bool | int | float | str) -> float:
    """A label as a number for ``sum`` (string labels are rejected on arrival)."""
    if isinstance(label, str):
        raise TypeError("string label under feedback_policy 'sum'")
    return float(label)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class AttributionJoiner:
    """Joins inference logs and feedback per request, per partition.

    Parameters
    ----------
    config
        Window, grace and policies.
    store
        Where pending state lives; must survive a handover (a changelog-backed
        table in the agent, a dict in tests).
    stats
        Counters to update; a fresh :class:`JoinStats` by default.
    clock
        Wall clock in epoch ms, used only for the wall-latency metric
        (:attr:`JoinStats.wall_latency`), never in an example.
    """

    def __init__(
        self,
        config: JoinerConfig,
        store: PendingStore,
        *,
        stats: JoinStats | None = None,
        clock: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.config = config
        self.store = store
        self.stats = stats if stats is not None else JoinStats()
        self.clock = clock
        self.index = ExpiryIndex()
        self.watermarks = Watermarks()
        self._persisted_marks: dict[int, int] = {}
        self._active: set[int] = set()
        self._gauges: dict[int, Counter[str]] = {}

    # -- partitions ---------------------------------------------------------

    def rebalance(self, assigned: Iterable[int]) -> None:
        """Make ``assigned`` the partitions this joiner owns.

        Called after every rebalance, once the store holds the recovered state
        of the assigned partitions. Derived state (expiry index, watermarks,
        gauges) of revoked partitions is dropped and that of assigned ones is
        rebuilt from the store, so a worker that takes over a partition picks
        up its pending requests and their deadlines.
        """
        owned = frozenset(assigned)
        every = self._active | owned
        self.index.drop_partitions(every)
        self.watermarks.drop_partitions(every)
        for partition in every:
            self._persisted_marks.pop(partition, None)
            self._gauges.pop(partition, None)
        self._active = set(owned)
        for partition in owned:
            mark = self.store.get_watermark(partition)
            self.watermarks.restore(partition, mark)
            if mark is not None:
                self._persisted_marks[partition] = mark
        for entry in self.store.entries(owned):
            self.index.schedule(entry.partition, entry.request_id, entry.deadline)
            self._count(entry, +1)
        self._publish_gauges()

    # -- inputs -------------------------------------------------------------

    def on_inference(self, log: InferenceLog, source: SourceRef) -> list[Outcome]:
        """Handle one decoded inference log read from ``source``."""
        self.stats.inferences += 1
        out = self.advance(source.partition, log.ts)
        entry = self.store.get(log.request_id)
        if entry is not None and entry.has_seen(log.event_id):
            self._duplicate(log, source, out)
            return out
        if entry is not None and entry.status == "closed":
            self._remember(entry, log.event_id)
            self.stats.late += 1
            out.append(
                self._reject("late", "inference log after its request was closed", log, source)
            )
            return out
        if entry is not None and entry.inference is not None:
            self._remember(entry, log.event_id)
            out.append(
                self._reject(
                    "duplicate",
                    f"request already has inference log {entry.inference.event_id}",
                    log,
                    source,
                    field="request_id",
                )
            )
            return out
        if entry is None:
            entry = self._new_entry(log.request_id, source.partition)
        else:
            self._count(entry, -1)
        entry.inference = log
        entry.inference_source = source
        entry.seen_event_ids.append(log.event_id)
        entry.deadline = log.ts + self.config.horizon_ms
        waiting, entry.feedback = entry.feedback, []
        for pending in waiting:
            out.extend(self._attach(entry, pending))
        self._save(entry)
        self._publish_gauges()
        return out

    def on_feedback(self, event: FeedbackEvent, source: SourceRef) -> list[Outcome]:
        """Handle one decoded feedback event read from ``source``."""
        self.stats.feedback += 1
        out = self.advance(source.partition, event.ts)
        entry = self.store.get(event.request_id)
        if entry is not None and entry.has_seen(event.event_id):
            self._duplicate(event, source, out)
            return out
        if self.config.feedback_policy == "sum" and isinstance(event.label, str):
            out.append(
                self._reject(
                    "validation",
                    "feedback_policy 'sum' needs numeric labels",
                    event,
                    source,
                    "label",
                )
            )
            return out
        if entry is not None and entry.status == "closed":
            self._remember(entry, event.event_id)
            self.stats.late += 1
            out.append(self._reject("late", "feedback after its window closed", event, source))
            return out
        mark = self.watermarks.get(source.partition)
        if entry is None and mark is not None and event.ts + self.config.horizon_ms < mark:
            self.stats.late += 1
            out.append(self._reject("late", "feedback older than any open window", event, source))
            return out
        if entry is None:
            entry = self._new_entry(event.request_id, source.partition)
            entry.deadline = event.ts + self.config.horizon_ms
        else:
            self._count(entry, -1)
        entry.seen_event_ids.append(event.event_id)
        pending = PendingFeedback(event=event, source=source)
        if entry.inference is None:
            if len(entry.feedback) >= self.config.max_feedback_per_request:
                out.append(self._overflow(pending))
            else:
                entry.feedback.append(pending)
        else:
            out.extend(self._attach(entry, pending))
        self._save(entry)
        self._publish_gauges()
        return out

    def advance(self, partition: int, ts: int) -> list[Outcome]:
        """Account for an event at ``ts`` on ``partition`` and close what is due.

        Returns the examples and dead letters that closing produced. Called by
        :meth:`on_inference` / :meth:`on_feedback` before they handle the event.
        """
        self._active.add(partition)
        mark = self.watermarks.observe(partition, ts)
        last = self._persisted_marks.get(partition)
        if last is None or mark - last >= self.config.watermark_persist_step_ms:
            self.store.put_watermark(partition, mark)
            self._persisted_marks[partition] = mark
        out: list[Outcome] = []
        due = self.index.pop_due(partition, mark)
        if due and self._persisted_marks.get(partition) != mark:
            # A closure is a state change made at this watermark: persist the
            # watermark with it, so a worker resuming from the stored state
            # never closes windows at an earlier point than this one did.
            self.store.put_watermark(partition, mark)
            self._persisted_marks[partition] = mark
        for request_id in due:
            entry = self.store.get(request_id)
            if entry is None:
                continue
            if entry.deadline >= mark:
                self.index.schedule(partition, request_id, entry.deadline)
                continue
            out.extend(self._close(entry, mark))
        if out:
            self._publish_gauges()
        return out

    # -- transitions --------------------------------------------------------

    def _attach(self, entry: PendingRequest, pending: PendingFeedback) -> list[Outcome]:
        """Attribute ``pending`` to ``entry``, which has its inference."""
        inference = entry.inference
        assert inference is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        event = pending.event
        if event.model != inference.model:
            return [
                self._reject(
                    "validation",
                    f"feedback for model {event.model!r}, request served by {inference.model!r}",
                    event,
                    pending.source,
                    "model",
                )
            ]
        if event.ts > inference.ts + self.config.window_ms:
            self.stats.late += 1
            return [
                self._reject("late", "feedback after its attribution window", event, pending.source)
            ]
        if entry.status == "emitted":
            self.stats.superseded += 1
            return []
        if self.config.feedback_policy == "first":
            entry.status = "emitted"
            entry.feedback = []
            mark = self.watermarks.get(entry.partition) or event.ts
            return [self._emit(entry, event, event.label, event.weight, mark)]
        if len(entry.feedback) >= self.config.max_feedback_per_request:
            return [self._overflow(pending)]
        entry.feedback.append(pending)
        return []

    def _close(self, entry: PendingRequest, mark: int) -> list[Outcome]:
        """The window of ``entry`` is due at watermark ``mark``: emit, reject or forget."""
        self._count(entry, -1)
        if entry.status == "closed":
            self.store.delete(entry.request_id)
            return []
        out: list[Outcome] = []
        if entry.inference is None:
            for pending in entry.feedback:
                self.stats.unmatched += 1
                out.append(
                    self._reject(
                        "orphan",
                        "no inference log came within the window",
                        pending.event,
                        pending.source,
                    )
                )
        elif entry.status == "open":
            out.extend(self._final_label(entry, mark))
        entry.status = "closed"
        entry.inference = None
        entry.inference_source = None
        entry.feedback = []
        entry.deadline = entry.deadline + self.config.retention_ms
        self._save(entry)
        return out

    def _final_label(self, entry: PendingRequest, mark: int) -> list[Outcome]:
        feedback = [p.event for p in entry.feedback]
        if not feedback:
            if self.config.no_feedback_policy == "drop":
                self.stats.dropped_unlabeled += 1
                return []
            self.stats.defaults += 1
            return [
                self._emit(entry, None, self.config.default_label, self.config.default_weight, mark)
            ]
        ordered = sorted(feedback, key=lambda e: (e.ts, e.event_id))
        if self.config.feedback_policy == "sum":
            total = sum(_number(e.label) for e in ordered)
            integral = all(isinstance(e.label, bool | int) for e in ordered)
            label: bool | int | float | str = int(total) if integral else total
            weight = sum(e.weight for e in ordered) / len(ordered)
            return [self._emit(entry, ordered[0], label, weight, mark)]
        chosen = ordered[-1]
        return [self._emit(entry, chosen, chosen.label, chosen.weight, mark)]

    def _emit(
        self,
        entry: PendingRequest,
        feedback: FeedbackEvent | None,
        label: bool | int | float | str,
        weight: float,
        mark: int,
    ) -> Emit:
        inference = entry.inference
        assert inference is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        feedback_id = feedback.event_id if feedback is not None else None
        example_id = training_example_id(entry.request_id, feedback_id)
        ts = max(mark, inference.ts)
        decided_at = feedback.ts if feedback is not None else ts
        delay = max(0, decided_at - inference.ts)
        example = TrainingExample.new(
            event_id=example_id,
            ts=ts,
            example_id=example_id,
            request_id=entry.request_id,
            model=inference.model,
            model_version=inference.model_version,
            features=inference.features,
            label=label,
            weight=weight,
            label_is_default=feedback is None,
            inference_event_id=inference.event_id,
            feedback_event_id=feedback_id,
            inference_ts=inference.ts,
            feedback_ts=feedback.ts if feedback is not None else None,
            join_latency_ms=delay,
        )
        entry.example_id = example_id
        if feedback is not None:
            self.stats.joins += 1
        self.stats.record_join(delay, max(0, self.clock() - entry.first_seen_ms))
        return Emit(example)

    # -- helpers ------------------------------------------------------------

    def _new_entry(self, request_id: str, partition: int) -> PendingRequest:
        return PendingRequest(
            request_id=request_id, partition=partition, deadline=0, first_seen_ms=self.clock()
        )

    def _save(self, entry: PendingRequest) -> None:
        self.store.put(entry)
        self.index.schedule(entry.partition, entry.request_id, entry.deadline)
        self._count(entry, +1)

    def _remember(self, entry: PendingRequest, event_id: str) -> None:
        entry.seen_event_ids.append(event_id)
        self.store.put(entry)

    def _duplicate(
        self, event: InferenceLog | FeedbackEvent, source: SourceRef, out: list[Outcome]
    ) -> None:
        self.stats.duplicates += 1
        if self.config.dead_letter_duplicates:
            out.append(
                self._reject("duplicate", f"event_id {event.event_id} seen before", event, source)
            )

    def _overflow(self, pending: PendingFeedback) -> Reject:
        return self._reject(
            "overflow",
            f"more than {self.config.max_feedback_per_request} feedback events for one request",
            pending.event,
            pending.source,
        )

    def _reject(
        self,
        kind: str,
        reason: str,
        event: InferenceLog | FeedbackEvent,
        source: SourceRef,
        field: str | None = None,
    ) -> Reject:
        self.stats.dead_letters[kind] += 1
        return Reject(kind, reason, source, event.request_id.encode(), encode(event), field)

    def _count(self, entry: PendingRequest, sign: int) -> None:
        if entry.status == "closed":
            kind = "closed_remembered"
        elif entry.inference is not None:
            kind = "pending_inferences"
        else:
            kind = "pending_feedback"
        self._gauges.setdefault(entry.partition, Counter())[kind] += sign

    def _publish_gauges(self) -> None:
        total: Counter[str] = Counter()
        for counts in self._gauges.values():
            total.update(counts)
        self.stats.pending_inferences = total["pending_inferences"]
        self.stats.pending_feedback = total["pending_feedback"]
        self.stats.closed_remembered = total["closed_remembered"]
