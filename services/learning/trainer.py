"""The online trainer: dedup, micro-batches, test-then-train, drift, checkpoints.

:class:`OnlineTrainer` is a plain class; the faust agent feeds it records in
offset order and publishes what it returns. For one model it:

1. skips records already reflected in its state (offset below the recorded
   next offset), records of other models, *held-out* examples (their
   request in the model's holdout share,
   :func:`services.validation.base.is_held_out` of ``request_id`` and
   ``promotion.holdout_percent``: kept for the validation gateway, so never
   scored, fed to the drift detectors, learned, remembered for dedup nor
   added to the digest; counted in :attr:`OnlineTrainer.held_out`),
   duplicates (example_id seen within the dedup horizon, or already in the
   open batch) and examples the model cannot learn from
   (:meth:`ModelAdapter.validate`: label or feature values; returned as
   ``rejected`` with the field, for the dead-letter topic);
2. forms micro-batches by count, so a replay forms the same batches;
3. scores each example before learning from it (prequential metrics), feeds
   the drift detectors, then learns (one optimizer step / ``learn_one`` each);
4. after each batch asks the triggers and, when one fires, hands a snapshot to
   its :class:`~services.learning.sink.CheckpointSink`.

Checkpoints are asynchronous: the training path pays only for the snapshot;
the sink commits it in the background, and the trainer reports each
checkpoint (:class:`CheckpointRecord`, for its CheckpointEvent) only once its
manifest is committed, in checkpoint order, from whichever call comes next
(:meth:`OnlineTrainer.process`, :meth:`~OnlineTrainer.tick`, ...).

Back-pressure: when a checkpoint is due while earlier commits still hold the
sink's budget (see :class:`~services.checkpoints.checkpointer.CheckpointerConfig`),

- a ``count`` or ``interval`` checkpoint is *coalesced*: not written, but
  accounted as taken (its trigger re-arms and the adaptive schedule steps,
  so which positions get checkpoints does not depend on timing); the next
  checkpoint written covers its examples and records how many were
  coalesced into it in its manifest's ``extra["coalesced"]``. Training
  never waits for these;
- ``drift``, ``metric``, ``manual``, ``config_change`` and ``shutdown``
  checkpoints are never coalesced: they wait for room.

A failed commit is never silent: it is logged at ERROR and counted
(:attr:`OnlineTrainer.checkpoint_failures`); unless a later checkpoint
commits, the trainer takes another checkpoint (same trigger, a reason
saying it retries) at the next batch end or tick once nothing is pending.
Every checkpoint holds the whole state and the store builds it on the last
*committed* one, so that checkpoint covers everything the failed one would
have. :meth:`OnlineTrainer.shutdown` waits for pending commits, then takes
the shutdown checkpoint and waits for it too.

A batch is learned whole or not at all. Should learning still fail on an
example that passed validation, the adapter restores the pre-batch model and
raises :class:`~schemas.errors.LearnError`; the trainer drops that
example (reported in :attr:`Outcome.failed`, for the dead-letter topic) and
learns the rest of the batch. The failure is a function of the model state and
the input, so a replay drops the same example and stays bitwise identical.

State only changes at micro-batch boundaries: the model, metrics, detectors,
seen-set, digest, the ``held_out`` count and the consumed offsets
``{topic: {partition: next_offset}}`` all describe the same prefix of the
input, so a checkpoint taken at any moment restores to a state from which
re-reading the input at the recorded offsets reproduces the uninterrupted
run bit for bit. Skipped records consume their offsets like trained ones;
whether an example is held out is a function of its ``request_id`` and the
configuration alone, so a replay holds out the same ones.

That holds for one configuration. A reconfigure that changes
``promotion.holdout_percent`` (SIGHUP) changes which examples are learned
from then on: the open batch, admitted under the old share, is learned
first, so the ``config_change`` checkpoint lies on the boundary where the
share changed, and the uninterrupted run and a replay from that checkpoint
decide every later record under the new share alike. A worker that is
killed before a checkpoint under the new settings committed (or that has
``on_config_change`` off) replays the records since its previous
checkpoint under the new share, as it replays them under any new setting.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import CheckpointError, ConfigError, LearnError, SchemaError
from services.learning.adapters import Example, ModelAdapter, build_adapter
from services.learning.config import ModelConfig
from services.learning.drift import DriftMonitor
from services.learning.metrics import PrequentialMetrics
from services.learning.sink import CheckpointSink, Committed, TrainerSnapshot
from services.learning.triggers import (
    AdaptiveSchedule,
    AnyOf,
    Decision,
    TriggerContext,
    build_triggers,
)
from services.validation.base import is_held_out

log = logging.getLogger(__name__)

_DIGEST_MOD = 1 << 256
#: Settings that define the model itself: changing them needs a new model.
_MODEL_DEFINING = (
    "kind",
    "task",
    "factory",
    "encoding",
    "loss",
    "optimizer",
    "positive_label",
    "feature_values",
)
#: Triggers whose checkpoint may be coalesced into a later one rather than wait.
COALESCIBLE = frozenset({"count", "interval"})


def example_digest(acc: int) -> str:
    """Hex form of the digest accumulator (sum of sha256 of ids mod 2**256)."""
    return f"{acc:064x}"


def id_hash(example_id: str) -> int:
    """The integer a trained example id adds to the order-independent digest."""
    return int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest(), "big")


@dataclass(frozen=True)
class CheckpointRecord:
    """A committed checkpoint, as the trainer reports it to the agent."""

    version: str
    trigger: str
    reason: str
    step: int
    examples_seen: int
    offsets: dict[str, dict[str, int]]
    metrics: dict[str, float]
    schedule: dict[str, Any]
    #: The store's manifest when the sink has one (for the CheckpointEvent).
    manifest: Any = field(default=None, compare=False, repr=False)
    #: Count/interval checkpoints coalesced into this one.
    coalesced: int = 0


@dataclass
class _Pending:
    """A submitted checkpoint whose commit the trainer has not seen finish yet."""

    future: Future[Committed]
    trigger: str
    reason: str
    step: int
    examples_seen: int
    offsets: dict[str, dict[str, int]]
    metrics: dict[str, float]
    schedule: dict[str, Any]
    coalesced: int
    record: CheckpointRecord | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class FailedExample:
    """An example of a batch the model failed to learn (dropped from the batch)."""

    example: Example
    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True)
class Outcome:
    """What happened to one record: ``status`` is ``buffered``, ``trained``
    (it completed a batch), ``held_out`` (in the model's holdout share: never
    learned), ``duplicate``, ``replayed``, ``other_model`` or ``rejected``
    (``reason`` says why, ``field`` which field: ``label`` or
    ``features.<name>``). ``failed`` lists examples of the batch just trained
    that learning failed on and that were left out of it."""

    status: str
    reason: str | None = None
    checkpoints: tuple[CheckpointRecord, ...] = field(default_factory=tuple)
    failed: tuple[FailedExample, ...] = field(default_factory=tuple)
    field: str | None = None  # shadows dataclasses.field from here on: keep last


class OnlineTrainer:
    """Trains one model from its training examples and checkpoints it.

    Parameters
    ----------
    config
        The model's configuration.
    sink
        Where checkpoints go.
    clock
        Milliseconds since the epoch; injected for tests of the interval trigger.
    adapter
        The model adapter; built from ``config`` when omitted.
    """

    def __init__(
        self,
        config: ModelConfig,
        sink: CheckpointSink,
        *,
        clock: Callable[[], int] | None = None,
        adapter: ModelAdapter | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.adapter = adapter if adapter is not None else build_adapter(config)
        self.metrics = PrequentialMetrics(config.metric_names, config.metrics.window)
        self.drift = DriftMonitor(
            config.drift, task=self.adapter.task, seed=config.seed, model=config.name
        )
        self.schedule, self.triggers = self._schedule_and_triggers(config)
        self.offsets: dict[str, dict[str, int]] = {}
        self._pending_offsets: dict[str, dict[str, int]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._batch: list[Example] = []
        self._batch_at: list[tuple[str, int, int]] = []
        self._batch_ids: set[str] = set()
        self.failed = 0
        self._digest = 0
        self.step = 0
        self.examples_seen = 0
        self.duplicates = 0
        self.rejected = 0
        #: Held-out examples skipped, up to the last batch boundary (as the offsets);
        #: those since then are in ``_held_out_since``.
        self.held_out = 0
        self._held_out_since = 0
        self._since_checkpoint = 0
        self._dirty = False
        self._drift_since: list[str] = []
        self._manual: str | None = None
        self._last_checkpoint_ms = self.clock()
        self._checkpoint_metrics: dict[str, float] = {}
        self.last_version: str | None = None
        #: Committed checkpoints, oldest first.
        self.checkpoints: list[CheckpointRecord] = []
        self._pending: deque[_Pending] = deque()
        self._committed: list[CheckpointRecord] = []
        #: Count/interval checkpoints coalesced (in all; since the last one submitted).
        self.coalesced = 0
        self._coalesced_since = 0
        #: Commits that failed; the (trigger, reason) a retry is owed for.
        self.checkpoint_failures = 0
        self._retry: tuple[str, str] | None = None
        #: Newer versions the last restore skipped because they did not load, with why.
        self.skipped_checkpoints: dict[str, str] = {}

    @staticmethod
    def _schedule_and_triggers(config: ModelConfig) -> tuple[AdaptiveSchedule, AnyOf]:
        every_n = config.triggers.every_n or 0
        schedule = AdaptiveSchedule(every_n, config.triggers.adaptive if every_n else None)
        return schedule, build_triggers(config.triggers, schedule)

    # -- input -----------------------------------------------------------------

    @property
    def digest(self) -> str:
        """Order-independent digest of the ids of every example trained so far."""
        return example_digest(self._digest)

    @property
    def pending(self) -> int:
        """Examples in the open micro-batch (not yet trained, not in any checkpoint)."""
        return len(self._batch)

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset to read from ``topic``/``partition`` (None: from the start)."""
        return self.offsets.get(topic, {}).get(str(partition))

    def process(self, example: Example, *, topic: str, partition: int, offset: int) -> Outcome:
        """Consume one record of ``topic``/``partition`` at ``offset``, in offset order.

        Called by the agent for each record (in an executor thread). Returns
        what happened, with the checkpoints whose commit finished since the
        last call (in checkpoint order).

        Raises
        ------
        DriftloopError
            A due checkpoint could not be snapshotted (nothing was submitted;
            it is due again at the next boundary). Commits reported since are
            returned by the next call.
        """
        done = self.position(topic, partition)
        if done is not None and offset < done:
            self._collect()
            return Outcome("replayed", None, tuple(self._take_committed()))
        self._pending_offsets.setdefault(topic, {})[str(partition)] = offset + 1
        status, reason, bad_field = self._admit(example, (topic, partition, offset))
        if status == "buffered" and len(self._batch) >= self.config.batch_size:
            failed: list[FailedExample] = []
            records = self._train_batch(failed)
            return Outcome("trained", None, tuple(records), failed=tuple(failed))
        if not self._batch:
            self._advance_offsets()
        self._collect()
        return Outcome(status, reason, tuple(self._take_committed()), field=bad_field)

    def _admit(
        self, example: Example, at: tuple[str, int, int]
    ) -> tuple[str, str | None, str | None]:
        if example.model != self.config.name:
            return "other_model", None, None
        if is_held_out(example.request_id, self.config.promotion.holdout_percent):
            self._held_out_since += 1
            return "held_out", None, None
        eid = example.example_id
        if eid in self._batch_ids or eid in self._seen:
            self.duplicates += 1
            return "duplicate", None, None
        try:
            self.adapter.validate(example)
        except SchemaError as exc:
            self.rejected += 1
            return "rejected", exc.reason, exc.field or None
        self._batch.append(example)
        self._batch_at.append(at)
        self._batch_ids.add(eid)
        return "buffered", None, None

    def _advance_offsets(self) -> None:
        self.held_out += self._held_out_since
        self._held_out_since = 0
        for topic, parts in self._pending_offsets.items():
            mine = self.offsets.setdefault(topic, {})
            for part, nxt in parts.items():
                if mine.get(part) != nxt:
                    mine[part] = nxt
                    self._dirty = True
        self._pending_offsets = {}

    # -- training --------------------------------------------------------------

    def _train_batch(self, failed: list[FailedExample] | None = None) -> list[CheckpointRecord]:
        batch, at = self._batch, self._batch_at
        self._batch, self._batch_at, self._batch_ids = [], [], set()
        while True:
            try:
                scores = self.adapter.test_then_train(batch)
                break
            except LearnError as exc:  # the model is as it was before the batch
                bad = exc.index
                self.failed += 1
                log.warning(
                    "model %s: learning failed on example %s (%s); batch rolled back and"
                    " learned without it",
                    self.config.name,
                    batch[bad].example_id,
                    exc.reason,
                )
                if failed is not None:
                    failed.append(FailedExample(batch[bad], *at[bad], exc.reason))
                batch, at = batch[:bad] + batch[bad + 1 :], at[:bad] + at[bad + 1 :]
        drifted = False
        for example, score in zip(batch, scores, strict=True):
            self.metrics.update(score)
            fired = self.drift.update(score, self.examples_seen)
            self.examples_seen += 1
            if fired:
                drifted = True
                self._drift_since.extend(fired)
            self._remember(example.example_id)
        if drifted:
            self.schedule.on_drift()
        self.step += 1
        self._since_checkpoint += len(batch)
        self._dirty = True
        self._advance_offsets()
        return self._maybe_checkpoint()

    def _remember(self, example_id: str) -> None:
        self._digest = (self._digest + id_hash(example_id)) % _DIGEST_MOD
        horizon = self.config.dedup_horizon
        if horizon:
            self._seen[example_id] = None
            if len(self._seen) > horizon:
                self._seen.popitem(last=False)

    # -- checkpoints -----------------------------------------------------------

    def _context(self, *, shutdown: bool = False, config_change: bool = False) -> TriggerContext:
        return TriggerContext(
            examples_seen=self.examples_seen,
            since_checkpoint=self._since_checkpoint,
            now_ms=self.clock(),
            last_checkpoint_ms=self._last_checkpoint_ms,
            drift=tuple(self._drift_since),
            metrics=self.metrics.values(),
            checkpoint_metrics=self._checkpoint_metrics,
            manual=self._manual,
            shutdown=shutdown and self._dirty,
            config_change=config_change,
        )

    def _maybe_checkpoint(self, **flags: bool) -> list[CheckpointRecord]:
        self._collect()
        decision = self.triggers.check(self._context(**flags))
        if decision is None and self._retry is not None and not self._pending:
            trigger, reason = self._retry
            decision = Decision(trigger, f"retry after a failed commit ({reason})")
        if decision is not None:
            self._take(decision.trigger, decision.reason)
        return self._take_committed()

    def request_checkpoint(self, reason: str = "manual request") -> None:
        """Ask for a checkpoint; it is taken at the next batch end or :meth:`tick`."""
        self._manual = reason

    def tick(self) -> list[CheckpointRecord]:
        """Evaluate the time-based and requested triggers without new input; return
        the checkpoints committed since the last call.

        Called by the agent on a timer (and when its input is idle).
        """
        return self._maybe_checkpoint()

    def shutdown(self) -> list[CheckpointRecord]:
        """Wait for pending commits, then checkpoint unsaved progress and wait for
        that commit too (SIGTERM). The open batch is not trained: the recorded
        offsets point at its first record."""
        records = self.wait_commits()
        records += self._maybe_checkpoint(shutdown=True)
        return records + self.wait_commits()

    def wait_commits(self) -> list[CheckpointRecord]:
        """Block until every submitted checkpoint committed or failed; return the
        committed ones not reported yet (they are not reported again)."""
        for pending in list(self._pending):
            pending.future.exception()  # waits; the outcome is handled in _collect
        self._collect()
        return self._take_committed()

    @property
    def commits_pending(self) -> int:
        """Checkpoints submitted whose commit the trainer has not seen finish."""
        return len(self._pending)

    def checkpoint(self, trigger: str, reason: str = "") -> CheckpointRecord:
        """Save the state as of the last batch boundary now, under ``trigger``,
        and wait for its commit (waiting for earlier ones too; never coalesced).

        Raises
        ------
        CheckpointError
            The snapshot or the commit failed (a failed commit is also logged,
            counted and retried as described in the module docstring).
        """
        pending = self._take(trigger, reason, block=True)
        self.wait_commits()
        if pending is None or pending.record is None:
            raise CheckpointError(
                f"checkpoint failed: {pending.error if pending else 'not taken'}",
                model=self.config.name,
                trigger=trigger,
                step=self.step,
            ) from (pending.error if pending else None)
        return pending.record

    def _take(self, trigger: str, reason: str, *, block: bool | None = None) -> _Pending | None:
        """Submit a checkpoint under ``trigger``; coalesce it (None) when it may be and
        the sink has no room. Raises what the sink raises for the snapshot, with
        nothing changed."""
        if block is None:
            block = trigger not in COALESCIBLE
        metrics = self.metrics.values()
        extra = self.describe()
        extra["coalesced"] = self._coalesced_since
        snapshot = TrainerSnapshot(
            model=self.config.name,
            trigger=trigger,
            reason=reason,
            step=self.step,
            examples_seen=self.examples_seen,
            offsets={t: dict(p) for t, p in self.offsets.items()},
            metrics=metrics,
            key_metric=self.config.key_metric,
            example_digest=example_digest(self._digest),
            config=self.config.as_json(),
            extra=extra,
            trainer_state=self._trainer_state(),
            model_objects=self.adapter.live_objects(),
            river_objects={"metrics": self.metrics.objects(), "drift": self.drift.objects()},
        )
        future = self.sink.submit(snapshot, block=block)
        if future is None:
            self.coalesced += 1
            self._coalesced_since += 1
            log.info(
                "model %s: %s checkpoint at step %d coalesced into the next one (the previous"
                " commit is still being written)",
                self.config.name,
                trigger,
                self.step,
            )
            self._mark_taken(metrics, written=False)
            return None
        self._coalesced_since = 0
        self._mark_taken(metrics, written=True)
        pending = _Pending(
            future=future,
            trigger=trigger,
            reason=reason,
            step=self.step,
            examples_seen=self.examples_seen,
            offsets=snapshot.offsets,
            metrics=metrics,
            schedule=self.schedule.describe(),
            coalesced=extra["coalesced"],
        )
        self._pending.append(pending)
        self._collect()  # a synchronous sink has committed already
        return pending

    def _mark_taken(self, metrics: dict[str, float], *, written: bool) -> None:
        """The trigger bookkeeping after a checkpoint was taken (or coalesced)."""
        key = self.config.key_metric
        self.schedule.on_checkpoint(
            drifted=bool(self._drift_since),
            previous=self._checkpoint_metrics.get(key),
            current=metrics.get(key),
        )
        self._since_checkpoint = 0
        self._dirty = self._dirty and not written  # a coalesced state is still unsaved
        self._drift_since = []
        self._manual = None
        self._last_checkpoint_ms = self.clock()
        self._checkpoint_metrics = metrics

    def _collect(self) -> None:
        """Handle the commits that finished, in checkpoint order (never blocks)."""
        while self._pending and self._pending[0].future.done():
            pending = self._pending.popleft()
            error = pending.future.exception()
            if error is not None:
                pending.error = error
                self.checkpoint_failures += 1
                self._retry = (pending.trigger, pending.reason)
                self._dirty = True
                self._coalesced_since += pending.coalesced  # the next one covers those too
                log.error(
                    "model %s: %s checkpoint at step %d failed to commit (%s); the next"
                    " checkpoint covers its examples",
                    self.config.name,
                    pending.trigger,
                    pending.step,
                    error,
                    exc_info=error,
                )
                continue
            committed = pending.future.result()
            record = CheckpointRecord(
                version=committed.version,
                trigger=pending.trigger,
                reason=pending.reason,
                step=pending.step,
                examples_seen=pending.examples_seen,
                offsets=pending.offsets,
                metrics=pending.metrics,
                schedule=pending.schedule,
                manifest=committed.manifest,
                coalesced=pending.coalesced,
            )
            pending.record = record
            self._retry = None  # this one holds everything a failed earlier one would have
            self.last_version = record.version
            self.checkpoints.append(record)
            self._committed.append(record)

    def _take_committed(self) -> list[CheckpointRecord]:
        out, self._committed = self._committed, []
        return out

    def describe(self) -> dict[str, Any]:
        """JSON facts for metrics and the manifest's ``extra``: schedule in force,
        drift detector summary, counters, batch size, config digest."""
        return {
            "schedule": self.schedule.describe(),
            "drift": self.drift.summary(),
            "batch_size": self.config.batch_size,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "failed": self.failed,
            "held_out": self.held_out,
            "config_digest": self.config.digest(),
            "checkpoints_coalesced": self.coalesced,
            "checkpoint_failures": self.checkpoint_failures,
        }

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "examples_seen": self.examples_seen,
            "digest": example_digest(self._digest),
            "seen": list(self._seen),
            "offsets": {t: dict(p) for t, p in self.offsets.items()},
            "schedule": self.schedule.describe(),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "failed": self.failed,
            "held_out": self.held_out,
            "since_checkpoint": self._since_checkpoint,
            "checkpoint_metrics": dict(self._checkpoint_metrics),
            "config_digest": self.config.digest(),
        }

    def restore(self) -> str | None:
        """Load the newest checkpoint of this model that loads; its version, or None if none.

        Called once before the first record. Afterwards :meth:`position` gives
        the offsets to seek the input to, and :attr:`skipped_checkpoints` the
        newer versions that did not load.

        Raises
        ------
        NoLoadableCheckpointError
            The model has checkpoints but none of them loads.
        """
        restored = self.sink.restore_latest(self.config.name, self.adapter)
        if restored is None:
            self.skipped_checkpoints = {}
            return None
        self.skipped_checkpoints = dict(restored.skipped)
        state = restored.trainer_state
        self.metrics.restore(restored.river_objects["metrics"])
        self.drift.restore(restored.river_objects["drift"])
        self.step = int(state["step"])
        self.examples_seen = int(state["examples_seen"])
        self._digest = int(state["digest"], 16)
        self._seen = OrderedDict.fromkeys(state["seen"])
        self.offsets = {t: {p: int(o) for p, o in ps.items()} for t, ps in state["offsets"].items()}
        self.schedule.restore(state["schedule"])
        self.duplicates = int(state["duplicates"])
        self.rejected = int(state["rejected"])
        self._checkpoint_metrics = dict(state["checkpoint_metrics"])
        self._since_checkpoint = 0
        self._dirty = False
        self.failed = int(state.get("failed", 0))
        self.held_out = int(state.get("held_out", 0))  # absent before holdout existed
        self._held_out_since = 0
        self._batch, self._batch_at, self._batch_ids = [], [], set()
        self._pending_offsets = {}
        self._coalesced_since = 0
        self._retry = None
        self.last_version = restored.version
        return restored.version

    def restart_clock(self) -> None:
        """Count the wall-clock (interval) trigger from now, as a freshly built
        trainer does: for a trainer restored earlier and used only now."""
        self._last_checkpoint_ms = self.clock()

    # -- configuration ---------------------------------------------------------

    @staticmethod
    def check_reconfigure(old: ModelConfig, new: ModelConfig) -> None:
        """Raise ConfigError when ``new`` is not a new setting of the model ``old``
        describes but another model (renamed, or a model-defining field changed)."""
        if new.name != old.name:
            raise ConfigError("reconfigure cannot rename a model", model=old.name)
        changed = [k for k in _MODEL_DEFINING if getattr(new, k) != getattr(old, k)]
        if changed:
            raise ConfigError(f"{changed} define the model; train a new model", model=old.name)

    def reconfigure(self, config: ModelConfig) -> list[CheckpointRecord]:
        """Apply new settings: checkpoint under the old ones first (trigger
        ``config_change``), then switch batch size, triggers, metrics window,
        drift detectors (rebuilt, so they start afresh, only if changed) and
        the holdout share. When ``promotion.holdout_percent`` changes, the
        open batch (admitted under the old share) is learned before that
        checkpoint, so every later record is decided under the new share.

        Raises
        ------
        ConfigError
            When the new config names another model or changes what defines
            the model (kind, task, factory, encoding, loss, optimizer).
        """
        old = self.config
        self.check_reconfigure(old, config)
        if config.digest() == old.digest():
            return []
        records: list[CheckpointRecord] = []
        if self._batch and config.promotion.holdout_percent != old.promotion.holdout_percent:
            records += self._train_batch()
        records += self._maybe_checkpoint(config_change=True)
        self.config = config
        schedule_state = self.schedule.describe()
        self.schedule, self.triggers = self._schedule_and_triggers(config)
        self.schedule.restore(schedule_state)
        if config.metrics != old.metrics:
            self.metrics = PrequentialMetrics(config.metric_names, config.metrics.window)
        if config.drift != old.drift or config.seed != old.seed:
            self.drift = DriftMonitor(
                config.drift, task=self.adapter.task, seed=config.seed, model=config.name
            )
        if config.dedup_horizon < len(self._seen):
            while len(self._seen) > config.dedup_horizon:
                self._seen.popitem(last=False)
        if len(self._batch) >= config.batch_size:
            records += self._train_batch()
        return records
