"""The online trainer: dedup, micro-batches, test-then-train, drift, checkpoints.

:class:`OnlineTrainer` is a plain class; the faust agent feeds it records in
offset order and publishes what it returns. For one model it:

1. skips records already reflected in its state (offset below the recorded
   next offset), records of other models, duplicates (example_id seen within
   the dedup horizon, or already in the open batch) and examples the model
   cannot learn from (:meth:`ModelAdapter.validate`: label or feature values;
   returned as ``rejected`` with the field, for the dead-letter topic);
2. forms micro-batches by count, so a replay forms the same batches;
3. scores each example before learning from it (prequential metrics), feeds
   the drift detectors, then learns (one optimizer step / ``learn_one`` each);
4. after each batch asks the triggers and, when one fires, hands a snapshot to
   its :class:`~services.learning.sink.CheckpointSink`.

A batch is learned whole or not at all. Should learning still fail on an
example that passed validation, the adapter restores the pre-batch model and
raises :class:`~schemas.errors.LearnError`; the trainer drops that
example (reported in :attr:`Outcome.failed`, for the dead-letter topic) and
learns the rest of the batch. The failure is a function of the model state and
the input, so a replay drops the same example and stays bitwise identical.

State only changes at micro-batch boundaries: the model, metrics, detectors,
seen-set, digest and the consumed offsets ``{topic: {partition: next_offset}}``
all describe the same prefix of the input, so a checkpoint taken at any
moment restores to a state from which re-reading the input at the recorded
offsets reproduces the uninterrupted run bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import ConfigError, LearnError, SchemaError
from services.learning.adapters import Example, ModelAdapter, build_adapter
from services.learning.config import ModelConfig
from services.learning.drift import DriftMonitor
from services.learning.metrics import PrequentialMetrics
from services.learning.sink import CheckpointSink, TrainerSnapshot
from services.learning.triggers import AdaptiveSchedule, AnyOf, TriggerContext, build_triggers

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
    (it completed a batch), ``duplicate``, ``replayed``, ``other_model`` or
    ``rejected`` (``reason`` says why, ``field`` which field: ``label`` or
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
        self._since_checkpoint = 0
        self._dirty = False
        self._drift_since: list[str] = []
        self._manual: str | None = None
        self._last_checkpoint_ms = self.clock()
        self._checkpoint_metrics: dict[str, float] = {}
        self.last_version: str | None = None
        self.checkpoints: list[CheckpointRecord] = []
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
        what happened, with any checkpoints committed on the way.
        """
        done = self.position(topic, partition)
        if done is not None and offset < done:
            return Outcome("replayed")
        self._pending_offsets.setdefault(topic, {})[str(partition)] = offset + 1
        status, reason, bad_field = self._admit(example, (topic, partition, offset))
        if status == "buffered" and len(self._batch) >= self.config.batch_size:
            failed: list[FailedExample] = []
            records = self._train_batch(failed)
            return Outcome("trained", None, tuple(records), failed=tuple(failed))
        if not self._batch:
            self._advance_offsets()
        return Outcome(status, reason, field=bad_field)

    def _admit(
        self, example: Example, at: tuple[str, int, int]
    ) -> tuple[str, str | None, str | None]:
        if example.model != self.config.name:
            return "other_model", None, None
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
        decision = self.triggers.check(self._context(**flags))
        if decision is None:
            return []
        return [self.checkpoint(decision.trigger, decision.reason)]

    def request_checkpoint(self, reason: str = "manual request") -> None:
        """Ask for a checkpoint; it is taken at the next batch end or :meth:`tick`."""
        self._manual = reason

    def tick(self) -> list[CheckpointRecord]:
        """Evaluate the time-based and requested triggers without new input.

        Called by the agent on a timer (and when its input is idle).
        """
        return self._maybe_checkpoint()

    def shutdown(self) -> list[CheckpointRecord]:
        """Checkpoint unsaved progress before stopping (SIGTERM). The open batch
        is not trained: the recorded offsets point at its first record."""
        return self._maybe_checkpoint(shutdown=True)

    def checkpoint(self, trigger: str, reason: str = "") -> CheckpointRecord:
        """Save the state as of the last batch boundary now, under ``trigger``.

        Raises whatever the sink raises (CheckpointError); the trainer's state
        is unchanged then and the trigger fires again at the next boundary.
        """
        metrics = self.metrics.values()
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
            extra=self.describe(),
            trainer_state=self._trainer_state(),
            model_objects=self.adapter.live_objects(),
            river_objects={"metrics": self.metrics.objects(), "drift": self.drift.objects()},
        )
        version = self.sink.save(snapshot)
        key = self.config.key_metric
        self.schedule.on_checkpoint(
            drifted=bool(self._drift_since),
            previous=self._checkpoint_metrics.get(key),
            current=metrics.get(key),
        )
        record = CheckpointRecord(
            version=version,
            trigger=trigger,
            reason=reason,
            step=self.step,
            examples_seen=self.examples_seen,
            offsets=snapshot.offsets,
            metrics=metrics,
            schedule=self.schedule.describe(),
        )
        self.last_version = version
        self.checkpoints.append(record)
        self._since_checkpoint = 0
        self._dirty = False
        self._drift_since = []
        self._manual = None
        self._last_checkpoint_ms = self.clock()
        self._checkpoint_metrics = metrics
        return record

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
            "config_digest": self.config.digest(),
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
        self._batch, self._batch_at, self._batch_ids = [], [], set()
        self._pending_offsets = {}
        self.last_version = restored.version
        return restored.version

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
        ``config_change``), then switch batch size, triggers, metrics window
        and drift detectors (rebuilt, so they start afresh, only if changed).

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
        records = self._maybe_checkpoint(config_change=True)
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
