"""The attribution join: inference logs + feedback -> training examples.

:class:`AttributionJoiner` is plain, synchronous logic over a
:class:`~services.attribution.state.PendingStore`; the faust agent in
``streams/joiner.py`` decodes records, calls :meth:`AttributionJoiner.on_inference`
or :meth:`AttributionJoiner.on_feedback`, sends what comes back, and reports
from a timer which input partitions are read up to their high watermark
(:meth:`AttributionJoiner.report_caught_up`).

Rules (``JoinerConfig`` names the knobs; the clocks are explained in
:mod:`services.attribution.expiry`):

- Either side may come first; both wait in the store under their request_id.
- Each record first advances its own input's watermark on its partition and
  closes every window the partition's closing watermark (the minimum over the
  inputs) has passed.
- An event more than ``window + grace`` behind its own input's watermark is
  ``late`` and dead-lettered, whatever the state of its request. Then a
  repeated ``event_id`` is a duplicate: counted, never joined twice (so a
  record replayed after a take-over changes nothing).
- Feedback is attributed when ``inference.ts - window <= feedback.ts <=
  inference.ts + window``; later feedback is ``late``, earlier is ``orphan``
  (no inference log came within the window), and so is feedback whose
  inference never came, when its wait (``max(feedback.ts) + 2 * window +
  grace``) closes. Feedback delivered after its own topic partition had
  passed the end of its window (``inference.ts + window + grace``) is
  ``late`` too.
- ``feedback_policy="first"`` emits at the first match; ``"last"`` and
  ``"sum"`` emit when the window closes (closing watermark past
  ``inference.ts + window + grace``), because a later event may still change
  the label. ``last`` takes the feedback with the greatest ``(ts, event_id)``;
  ``sum`` adds the labels (booleans count 0/1), averages the weights and is
  attributed to the earliest feedback, so more feedback arriving later does
  not change its example_id.
- The example carries its inference log's ``route`` (``live``, ``canary``
  or none), ``prediction`` and ``scores``, so the version that served the
  request can be scored on the feedback; a default-label example too.
- A window closing without feedback is dropped or emitted with the default
  label (``label_is_default``), per ``no_feedback_policy``.
- One inference log per route for a request: its live or canary log (route
  ``live``, ``canary`` or none) is the one that makes the training example,
  and a second one (another event_id) is a ``duplicate`` of field
  ``request_id``, open or closed. A shadow log (``route="shadow"``), from the
  shadow slot answering the same request for scoring, is kept beside it
  (:attr:`PendingRequest.shadow`) whichever comes first: it never makes a
  training example, never receives the feedback, never makes the live log a
  duplicate nor is dead-lettered as one of it. When the request's window
  closes the shadow log is counted (:attr:`JoinStats.shadows_closed`) and
  dropped without a dead letter, after it is *scored*: a
  :class:`~schemas.events.ShadowScore` (:class:`Scored`; ``shadow-scores``,
  key: model) pairs its prediction with the live log's and the label of the
  request's example, when the request made an example with a real label (none
  for a default label, a dropped window, or a request without a live log) and
  the shadow log was read in time: before its own input's watermark had passed
  the end of the request's window (``live.ts + window + grace``), the rule
  that judges feedback read late. Read in time, a shadow log always comes
  before the window closes, whatever the merge; read later, it never counts,
  whether or not the window had closed in that merge. It must also be within a
  window of the live log (``|shadow.ts - live.ts| <= window``); a shadow log
  that comes first waits for its live log as feedback does (``shadow.ts + 2 *
  window + grace``), so a live log within a window of it always finds it. A
  second shadow log read in time (another event_id: a retry; which of two
  comes first depends on the read order) makes the request's shadow ambiguous:
  no score. Each kept shadow log remembers its mark, the one with the smaller
  mark is kept, the others only their smallest mark, so the verdict is the
  same in every read order. One that comes after the window closed is
  remembered and dropped. A shadow log too far behind its topic's watermark is
  ``late``, as every event is; a repeat of its event_id is a duplicate like
  any repeat. The score's ``event_id`` is
  :func:`~schemas.events.shadow_score_id` of the request and the shadow log,
  its ``ts`` the window's end: byte-identical in every interleaving and
  replay, like the examples.
- ``example_id = training_example_id(request_id, feedback_event_id)``; the
  example's ``event_id`` is the example_id. Its ``ts`` is the event time at
  which it was decided, from the events alone: ``max(inference.ts,
  feedback.ts)`` for an example emitted at the match (``first``), the
  window's end ``inference.ts + window + grace`` for one emitted when the
  window closed (``last``, ``sum``, default label). So every interleaving of
  the inputs, and every replay, emits byte-for-byte the same examples.
- ``join_latency_ms`` is event time too: feedback ``ts`` minus inference
  ``ts``, clamped at 0 (the feedback delay, part of the loop's latency); for a
  default label, ``window + grace`` (when the window closed). The wall-clock
  time from the first half reaching the joiner to the example is only a
  metric (:attr:`JoinStats.wall_latency`).

Where duplicates can still arise: the agent sends an example, then dies
before the store write and the input offset are committed. The replacement
replays those records and emits the same example again, with the same
example_id; the trainer drops it by example_id.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.codec import encode
from schemas.events import (
    FeedbackEvent,
    InferenceLog,
    ShadowScore,
    TrainingExample,
    shadow_score_id,
    training_example_id,
)
from services.attribution.config import JoinerConfig
from services.attribution.expiry import (
    DEFAULT_INPUTS,
    FEEDBACK,
    INFERENCE,
    ExpiryIndex,
    Watermarks,
)
from services.attribution.state import (
    PendingFeedback,
    PendingRequest,
    PendingStore,
    SourceRef,
)
from services.attribution.stats import JoinStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Emit:
    """A training example to send to ``training-examples`` (key: its model)."""

    example: TrainingExample


@dataclass(frozen=True)
class Scored:
    """A shadow log scored at its request's window close: to send to
    ``shadow-scores`` (key: its model)."""

    score: ShadowScore


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


Outcome = Emit | Scored | Reject


def _number(label: bool | int | float | str) -> float:
    """A label as a number for ``sum`` (string labels are rejected on arrival)."""
    if isinstance(label, str):
        raise TypeError("string label under feedback_policy 'sum'")
    return float(label)


class Own:
    """The type of :data:`OWN`."""

    def __repr__(self) -> str:
        return "OWN"


#: ``before`` of a record read locally: the joiner's own watermark of its input.
OWN = Own()

_READ_AFTER = "feedback read after its topic partition had passed the end of its window"


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
        (:attr:`JoinStats.wall_latency`) and the idle rule, never in an example.
    inputs
        Names of the inputs that can deliver to every partition (the
        ``input`` of :meth:`on_inference` / :meth:`on_feedback`); the
        closing watermark is the minimum over them.
    """

    def __init__(
        self,
        config: JoinerConfig,
        store: PendingStore,
        *,
        stats: JoinStats | None = None,
        clock: Callable[[], int] = _wall_clock_ms,
        inputs: tuple[str, ...] = DEFAULT_INPUTS,
    ) -> None:
        self.config = config
        self.store = store
        self.stats = stats if stats is not None else JoinStats()
        self.clock = clock
        self.index = ExpiryIndex()
        self.watermarks = Watermarks(inputs, idle_ms=config.idle_ms)
        self._persisted_marks: dict[tuple[int, str], int] = {}
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
        self._persisted_marks = {
            key: mark for key, mark in self._persisted_marks.items() if key[0] not in every
        }
        for partition in every:
            self._gauges.pop(partition, None)
        self._active = set(owned)
        for partition in owned:
            for input in self.watermarks.inputs:
                mark = self.store.get_watermark(partition, input)
                self.watermarks.restore(partition, input, mark)
                if mark is not None:
                    self._persisted_marks[(partition, input)] = mark
        for entry in self.store.entries(owned):
            self.index.schedule(entry.partition, entry.request_id, entry.deadline)
            self._count(entry, +1)
        self._publish_gauges()

    # -- inputs -------------------------------------------------------------

    def on_inference(
        self,
        log: InferenceLog,
        source: SourceRef,
        input: str = INFERENCE,
        *,
        partition: int | None = None,
        before: int | Own | None = OWN,
    ) -> list[Outcome]:
        """Handle one decoded inference log read from ``source`` (of ``input``).

        ``partition`` is the join partition (default: the source's);
        ``before`` the watermark of ``input`` just before the record, for a
        record forwarded from another partition (:mod:`services.attribution.routing`;
        default :data:`OWN`: this joiner's watermark of ``input`` on ``partition``).
        """
        self.stats.inferences += 1
        partition = source.partition if partition is None else partition
        behind = self._behind(partition, input, log.ts, before)
        out = self.advance(partition, self._seen_ts(log.ts, before), input)
        entry = self.store.get(log.request_id)
        if behind is not None and behind > self.config.horizon_ms:
            # its own topic partition had passed the end of its window
            out.append(self._late(log, source, input, behind, partition))
            return out
        if entry is not None and entry.has_seen(log.event_id):
            self._duplicate(log, source, out)
            return out
        if log.route == "shadow":
            mark = 0 if behind is None else max(0, log.ts + behind)  # the watermark before it
            out.extend(self._on_shadow(entry, log, partition, mark))
            self._publish_gauges()
            return out
        served = None
        if entry is not None:
            served = entry.inference.event_id if entry.inference else entry.closed_inference_id
        if entry is not None and served is not None:
            self._remember(entry, log)
            out.append(
                self._reject(
                    "duplicate",
                    f"request already has inference log {served}",
                    log,
                    source,
                    field="request_id",
                )
            )
            return out
        if entry is None:
            entry = self._new_entry(log.request_id, partition)
        else:
            # open and waiting for its inference, or an orphan tombstone:
            # nothing was joined there, so this inference opens the request
            self._count(entry, -1)
            entry.status = "open"
        entry.inference = log
        entry.inference_source = source
        entry.saw(log)
        entry.deadline = log.ts + self.config.horizon_ms
        waiting, entry.feedback = entry.feedback, []
        for pending in waiting:
            out.extend(self._attach(entry, pending))
        self._save(entry)
        self._publish_gauges()
        return out

    def _on_shadow(
        self, entry: PendingRequest | None, log: InferenceLog, partition: int, mark: int
    ) -> list[Outcome]:
        """Keep ``log``, a shadow log of its request read when its input's
        watermark was ``mark`` (see the module rules)."""
        self.stats.shadow_logs += 1
        if entry is not None and entry.shadow is None and entry.closed_shadow_id is not None:
            # the request's shadow log was dropped at an earlier close: this one is a second
            self._remember(entry, log)
            self.stats.shadows_closed += 1
            return []
        if entry is not None and entry.shadow is not None:
            # a second one: which of two shadow logs comes first is the read
            # order's (they may sit on different partitions), so neither is
            # refused; the one read at the smaller mark is kept, the other's
            # mark remembered (either may make the shadow ambiguous)
            kept = entry.shadow_mark
            if mark < kept:
                entry.shadow, entry.shadow_mark = log, mark
            other = max(mark, kept)
            if entry.other_shadow_mark is None or other < entry.other_shadow_mark:
                entry.other_shadow_mark = other
            self._remember(entry, log)
            self.stats.shadows_closed += 1
            return []
        if entry is not None and entry.status == "closed":
            entry.closed_shadow_id = log.event_id  # so a second one is told apart
            self._remember(entry, log)
            self.stats.shadows_closed += 1
            return []
        # without its live log, it waits for it as feedback does (a live log
        # within a window of it can come until then), and never closes sooner
        # than the request's feedback waits
        if entry is None:
            entry = self._new_entry(log.request_id, partition)
            entry.deadline = log.ts + self._wait_ms
        else:
            self._count(entry, -1)
            if entry.inference is None:
                entry.deadline = max(entry.deadline, log.ts + self._wait_ms)
        entry.shadow = log
        entry.shadow_mark = mark
        entry.saw(log)
        self._save(entry)
        return []

    def on_feedback(
        self,
        event: FeedbackEvent,
        source: SourceRef,
        input: str = FEEDBACK,
        *,
        partition: int | None = None,
        before: int | Own | None = OWN,
    ) -> list[Outcome]:
        """Handle one decoded feedback event read from ``source`` (of ``input``);
        ``partition`` and ``before`` as for :meth:`on_inference`."""
        self.stats.feedback += 1
        partition = source.partition if partition is None else partition
        behind = self._behind(partition, input, event.ts, before)
        out = self.advance(partition, self._seen_ts(event.ts, before), input)
        entry = self.store.get(event.request_id)
        if behind is not None and behind > self.config.horizon_ms:
            out.append(self._late(event, source, input, behind, partition))
            return out
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
        mark = None if behind is None else event.ts + behind  # the watermark before it
        pending = PendingFeedback(event=event, source=source, mark=mark)
        if entry is not None and entry.status == "closed":
            if entry.closed_inference_ts is not None:
                self._remember(entry, event)
                out.append(self._after_close(entry.closed_inference_ts, pending))
                return out
            self._count(entry, -1)  # an orphan tombstone: wait again for the inference
            entry.status = "open"
            entry.deadline = event.ts + self._wait_ms
        elif entry is None:
            entry = self._new_entry(event.request_id, partition)
            entry.deadline = event.ts + self._wait_ms
        else:
            self._count(entry, -1)
        entry.saw(event)
        if entry.inference is None:
            if len(entry.feedback) >= self.config.max_feedback_per_request:
                out.append(self._overflow(pending))
            else:
                entry.feedback.append(pending)
                entry.deadline = max(entry.deadline, event.ts + self._wait_ms)
        else:
            out.extend(self._attach(entry, pending))
        self._save(entry)
        self._publish_gauges()
        return out

    def advance(self, partition: int, ts: int, input: str = INFERENCE) -> list[Outcome]:
        """Account for an event at ``ts`` from ``input`` on ``partition`` and
        close what the partition's closing watermark has passed.

        Returns the examples and dead letters that closing produced. Called by
        :meth:`on_inference` / :meth:`on_feedback` before they handle the event.
        """
        self._active.add(partition)
        if self.watermarks.observe(partition, input, ts):
            logger.info(
                "joiner: %s[%d] delivers again: rejoins the closing watermark", input, partition
            )
        mark = self.watermarks.get(partition, input)
        assert mark is not None  # noqa: S101 - observe() above just set it; narrows the type
        last = self._persisted_marks.get((partition, input))
        if last is None or mark - last >= self.config.watermark_persist_step_ms:
            self._persist(partition, input, mark)
        return self._close_due(partition)

    def route(self, partition: int, input: str, ts: int) -> tuple[int | None, list[Outcome]]:
        """Account for a record of ``input`` read on ``partition`` that is
        joined on another partition (it is forwarded there).

        Returns the watermark of ``input`` just before it (the forward carries
        it, so the record is judged late or not exactly as if read locally)
        and what advancing this partition's watermark of ``input`` closed.
        """
        self.stats.forwarded += 1
        before = self.watermarks.get(partition, input)
        return before, self.advance(partition, ts, input)

    def on_marker(self, partition: int, input: str, ts: int | None, idle: bool) -> list[Outcome]:
        """Apply a marker read on join ``partition``: source ``input``, owned by
        another worker, has delivered up to ``ts`` (every record of it forwarded
        here before that came before the marker) and is ``idle`` or not.

        An idle marker releases the source from this partition's closing
        watermark until a record or a non-idle marker of it comes, or no idle
        marker came for ``idle_ms`` (its owner stopped: the release lapses).
        Returns what the move of the closing watermark closed.
        """
        self._active.add(partition)
        if ts is not None:
            self.watermarks.observe(partition, input, ts, rejoin=not idle)
            mark = self.watermarks.get(partition, input)
            last = self._persisted_marks.get((partition, input))
            if mark is not None and (
                last is None or mark - last >= self.config.watermark_persist_step_ms
            ):
                self._persist(partition, input, mark)
        elif not idle:
            self.watermarks.rejoin(partition, input)
        if idle and self.watermarks.release(partition, input, self.clock()):
            self.stats.idle_releases += 1
            logger.info(
                "joiner: %s idle at its owner: left out of partition %d's closing watermark",
                input,
                partition,
            )
        return self._close_due(partition)

    def report_caught_up(self, input: str, partition: int, caught_up: bool = True) -> bool:
        """The worker's check of ``input``'s partition ``partition``:
        ``caught_up`` if every record up to its high watermark was handled.

        Applies the idle rule (:meth:`Watermarks.report`) at the wall-clock
        time now; returns True when this check released the input, which is
        counted and logged. The windows the release lets close are closed
        when the partition's next record is handled.
        """
        if partition not in self._active:
            return False
        now = self.clock()
        released = self.watermarks.report(partition, input, caught_up=caught_up, now_ms=now)
        if released:
            self.stats.idle_releases += 1
            logger.info(
                "joiner: %s read up to its high watermark with nothing new for %d ms: "
                "left out of partition %d's closing watermark (%s at %s; now %s)",
                input if ":" in input else f"{input}[{partition}]",
                self.config.idle_ms,
                partition,
                input,
                self.watermarks.get(partition, input),
                self.watermarks.closing(partition, now),
            )
        return released

    # -- transitions --------------------------------------------------------

    def _behind(
        self, partition: int, input: str, ts: int, before: int | Own | None = OWN
    ) -> int | None:
        """How far ``ts`` is behind ``input``'s watermark (None: no watermark yet)."""
        mark = self.watermarks.get(partition, input) if isinstance(before, Own) else before
        return None if mark is None else mark - ts

    @staticmethod
    def _seen_ts(ts: int, before: int | Own | None) -> int:
        """What a record tells of its input's watermark: its ``ts``, and for a
        forwarded record the watermark it carried."""
        return ts if isinstance(before, Own) or before is None else max(ts, before)

    def _read_after_window(self, pending: PendingFeedback, inference_ts: int) -> bool:
        """Whether the feedback's own topic partition had passed the end of the
        window (``inference_ts + window + grace``) before it delivered it."""
        return pending.mark is not None and pending.mark > inference_ts + self.config.horizon_ms

    def _close_due(self, partition: int) -> list[Outcome]:
        closing = self.watermarks.closing(partition, self.clock())
        if closing is None:
            return []
        due = self.index.pop_due(partition, closing)
        if due:
            # A closure is a state change made at these watermarks: persist
            # them with it, so a worker resuming from the stored state never
            # closes windows at an earlier point than this one did.
            self._persist_all(partition)
        out: list[Outcome] = []
        for request_id in due:
            entry = self.store.get(request_id)
            if entry is None:
                continue
            if entry.deadline >= closing:
                self.index.schedule(partition, request_id, entry.deadline)
                continue
            out.extend(self._close(entry))
        if due:
            self._publish_gauges()
        return out

    def _attach(self, entry: PendingRequest, pending: PendingFeedback) -> list[Outcome]:
        """Attribute ``pending`` to ``entry``, which has its inference."""
        inference = entry.inference
        assert inference is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        event = pending.event
        # the window before the model: a tombstone, which knows only the
        # inference's ts, must give the same verdict (see _after_close)
        if event.ts > inference.ts + self.config.window_ms:
            self.stats.late += 1
            return [
                self._reject("late", "feedback after its attribution window", event, pending.source)
            ]
        if event.ts < inference.ts - self.config.window_ms:
            return [self._orphan(pending)]
        if self._read_after_window(pending, inference.ts):
            self.stats.late += 1
            return [self._reject("late", _READ_AFTER, event, pending.source)]
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
        if entry.status == "emitted":
            self.stats.superseded += 1
            return []
        if self.config.feedback_policy == "first":
            entry.status = "emitted"
            entry.example_label = event.label  # for the shadow's score, at the close
            entry.feedback = []
            ts = max(inference.ts, event.ts)
            return [self._emit(entry, event, event.label, event.weight, ts)]
        if len(entry.feedback) >= self.config.max_feedback_per_request:
            return [self._overflow(pending)]
        entry.feedback.append(pending)
        return []

    def _after_close(self, inference_ts: int, pending: PendingFeedback) -> Reject:
        """Feedback for a request whose window closed (it had an inference)."""
        event = pending.event
        if event.ts > inference_ts + self.config.window_ms:
            self.stats.late += 1
            return self._reject(
                "late", "feedback after its attribution window", event, pending.source
            )
        if event.ts < inference_ts - self.config.window_ms:
            return self._orphan(pending)
        if self._read_after_window(pending, inference_ts):
            self.stats.late += 1
            return self._reject("late", _READ_AFTER, event, pending.source)
        # within the window, read in time, yet closed: only after an idle release
        self.stats.late += 1
        return self._reject("late", "feedback after its window closed", event, pending.source)

    def _close(self, entry: PendingRequest) -> list[Outcome]:
        """The closing watermark passed the deadline of ``entry``: emit, reject or forget."""
        self._count(entry, -1)
        if entry.status == "closed":
            self.store.delete(entry.request_id)
            return []
        out: list[Outcome] = []
        label = entry.example_label if entry.status == "emitted" else None
        if entry.inference is None:
            out.extend(self._orphan(pending) for pending in entry.feedback)
        elif entry.status == "open":
            for outcome in self._final_label(entry, entry.deadline):
                out.append(outcome)
                if not outcome.example.label_is_default:
                    label = outcome.example.label
        if entry.inference is not None:
            entry.closed_inference_id = entry.inference.event_id
            entry.closed_inference_ts = entry.inference.ts
        if entry.shadow is not None:  # kept for scoring only: no dead letter
            self.stats.shadows_closed += 1
            entry.closed_shadow_id = entry.shadow.event_id
            if label is not None:
                out.extend(self._score_shadow(entry, label))
        entry.status = "closed"
        entry.inference = None
        entry.shadow = None
        entry.shadow_mark = 0
        entry.other_shadow_mark = None
        entry.example_label = None
        entry.inference_source = None
        entry.feedback = []
        entry.deadline = self._forget_at(entry)
        self._save(entry)
        return out

    def _score_shadow(
        self, entry: PendingRequest, label: bool | int | float | str
    ) -> list[Outcome]:
        """The shadow log of ``entry`` paired with its live log and its example's
        ``label``, if it was read in time and is the only one (see the module rules)."""
        live, shadow = entry.inference, entry.shadow
        assert live is not None  # noqa: S101 - the caller checked; narrows the type
        assert shadow is not None  # noqa: S101 - the caller checked; narrows the type
        end = live.ts + self.config.horizon_ms
        window = self.config.window_ms
        if (
            shadow.model != live.model
            or entry.example_id is None
            or entry.shadow_mark > end
            or abs(shadow.ts - live.ts) > window
        ):
            return []
        if entry.other_shadow_mark is not None and entry.other_shadow_mark <= end:
            return []  # two shadow answers for one request: neither is scored
        self.stats.shadow_scores += 1
        score = ShadowScore.new(
            event_id=shadow_score_id(entry.request_id, shadow.event_id),
            ts=end,
            request_id=entry.request_id,
            example_id=entry.example_id,
            model=shadow.model,
            model_version=shadow.model_version,
            shadow_event_id=shadow.event_id,
            prediction=shadow.prediction,
            scores=shadow.scores,
            label=label,
            live_version=live.model_version,
            live_route=live.route,
            live_event_id=live.event_id,
            live_ts=live.ts,
            live_prediction=live.prediction,
            live_scores=live.scores,
        )
        return [Scored(score)]

    def _final_label(self, entry: PendingRequest, ts: int) -> list[Emit]:
        feedback = [p.event for p in entry.feedback]
        if not feedback:
            if self.config.no_feedback_policy == "drop":
                self.stats.dropped_unlabeled += 1
                return []
            self.stats.defaults += 1
            return [
                self._emit(entry, None, self.config.default_label, self.config.default_weight, ts)
            ]
        ordered = sorted(feedback, key=lambda e: (e.ts, e.event_id))
        if self.config.feedback_policy == "sum":
            total = sum(_number(e.label) for e in ordered)
            integral = all(isinstance(e.label, bool | int) for e in ordered)
            label: bool | int | float | str = int(total) if integral else total
            weight = sum(e.weight for e in ordered) / len(ordered)
            return [self._emit(entry, ordered[0], label, weight, ts)]
        chosen = ordered[-1]
        return [self._emit(entry, chosen, chosen.label, chosen.weight, ts)]

    def _emit(
        self,
        entry: PendingRequest,
        feedback: FeedbackEvent | None,
        label: bool | int | float | str,
        weight: float,
        ts: int,
    ) -> Emit:
        inference = entry.inference
        assert inference is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        feedback_id = feedback.event_id if feedback is not None else None
        example_id = training_example_id(entry.request_id, feedback_id)
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
            route=inference.route,
            prediction=inference.prediction,
            scores=inference.scores,
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

    def _persist(self, partition: int, input: str, mark: int) -> None:
        self.store.put_watermark(partition, input, mark)
        self._persisted_marks[(partition, input)] = mark

    def _persist_all(self, partition: int) -> None:
        """Persist every input's watermark of ``partition`` not yet persisted."""
        for input in self.watermarks.inputs:
            mark = self.watermarks.get(partition, input)
            if mark is not None and self._persisted_marks.get((partition, input)) != mark:
                self._persist(partition, input, mark)

    def _late(
        self,
        event: InferenceLog | FeedbackEvent,
        source: SourceRef,
        input: str,
        behind: int,
        partition: int,
    ) -> Reject:
        """``event`` came too far behind its own input's watermark (joined on ``partition``)."""
        self.stats.late += 1
        self._persist_all(partition)  # a decision made at this watermark
        what = "inference log" if isinstance(event, InferenceLog) else "feedback"
        return self._reject(
            "late",
            f"{what} {behind} ms behind the {input} watermark of its partition"
            " (its window had passed there)",
            event,
            source,
        )

    def _orphan(self, pending: PendingFeedback) -> Reject:
        self.stats.unmatched += 1
        return self._reject(
            "orphan", "no inference log came within the window", pending.event, pending.source
        )

    @property
    def _wait_ms(self) -> int:
        """How long (event time, after its ``ts``) feedback waits for its
        inference: ``window`` (the earliest inference it can match is that
        much later) plus the inference's own ``window + grace``."""
        return self.config.window_ms + self.config.horizon_ms

    def _forget_at(self, entry: PendingRequest) -> int:
        """When (closing watermark) a closed request is forgotten.

        An event less than ``window + grace`` behind its own input's
        watermark (any other is late at once) comes while the closing
        watermark is at most ``window + grace`` past its ``ts``. So the
        tombstone is kept until that is past every event it saw (a repeat
        finds it: a duplicate) and past ``inference.ts + window +
        closed_retention`` (feedback up to ``closed_retention`` after the
        window finds it: late)."""
        latest = entry.max_ts
        if entry.closed_inference_ts is not None:
            latest = max(
                latest,
                entry.closed_inference_ts + self.config.window_ms + self.config.retention_ms,
            )
        return latest + self.config.horizon_ms

    def _remember(self, entry: PendingRequest, event: InferenceLog | FeedbackEvent) -> None:
        entry.saw(event)
        if entry.status == "closed":  # kept as long as for the events it saw before
            entry.deadline = max(entry.deadline, event.ts + self.config.horizon_ms)
            self.index.schedule(entry.partition, entry.request_id, entry.deadline)
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
        elif entry.inference is not None or entry.shadow is not None:
            kind = "pending_inferences"
        else:
            kind = "pending_feedback"
        counts = self._gauges.get(entry.partition)
        if counts is None:  # not setdefault: that builds a Counter on every call
            counts = self._gauges[entry.partition] = Counter()
        counts[kind] += sign

    def _publish_gauges(self) -> None:
        gauges = self._gauges.values()
        self.stats.pending_inferences = sum(c["pending_inferences"] for c in gauges)
        self.stats.pending_feedback = sum(c["pending_feedback"] for c in gauges)
        self.stats.closed_remembered = sum(c["closed_remembered"] for c in gauges)
