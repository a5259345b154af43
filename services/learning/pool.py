"""The trainers of one worker: :class:`TrainerPool`, plain Python, no faust.

:class:`TrainerPool` owns one :class:`~services.learning.trainer.OnlineTrainer`
per configured model, the checkpoint store behind them, and the bookkeeping of
which input offset comes next. It decodes raw records, feeds the trainers, and
queues what has to be sent: dead letters and CheckpointEvents, as events (the
agent's :class:`~services.publish.base.EventPublisher` gives each its topic
and key). The faust agent (:mod:`streams.trainer`) hands it records and
publishes what it returns.

One trainer per model, one partition per model
----------------------------------------------
Micro-batches are formed by count in input order, so a replay must present a
model's examples in the same order. Order exists only within a partition, so
a model's whole key space is one partition: ``training-examples`` is keyed by
model and Kafka's default partitioner (murmur2, the same in kafka-python,
aiokafka and the Java client) puts every example of model ``m`` on partition
:func:`partition_of` ``(m)``. The worker that owns that partition trains
``m``; several models may share a partition (each trainer sees every record of
it and skips the others' examples). An example of ``m`` found on another
partition was produced with the wrong key; it goes to ``dead-letters``
(``misrouted``) instead of silently breaking replay determinism.

Exactly-once model state
------------------------
Model state only changes at micro-batch boundaries, and every checkpoint
records the next input offset of each partition as of that boundary. On each
assignment the pool restores every owned model from its newest checkpoint
(:meth:`TrainerPool.assign`) and the agent seeks each owned partition to the
smallest offset its models recorded (faust itself first seeks to the consumer
group's committed offsets; we seek again right after, before the fetcher
resumes). Records below a model's recorded offset are skipped by its trainer,
duplicates by ``example_id`` within the checkpointed horizon too, and the
examples of held-out requests (a function of request_id and the model's
configuration) are skipped again on a replay. A worker killed at any moment
therefore resumes to the same state an uninterrupted run has at the same
input position: the progress since its last checkpoint is redone,
identically. The consumer group's committed offsets only serve lag
monitoring.

Checkpoints commit in the background (see :mod:`services.learning.trainer`):
a kill loses the pending ones, and the restore then starts from the newest
*committed* checkpoint and replays from its offsets, so the consumer group's
offsets (which faust commits as records are handled, ahead of any
checkpoint) never decide what is rebuilt.

CheckpointEvents are queued once the manifest is committed (the trainer
reports a checkpoint only then, in checkpoint order; commits finishing
between records are picked up at the next chunk or tick) with
``event_id = "checkpoint:<version>"``. A kill between commit and publish
loses the event; on restore the pool publishes the event of the checkpoint
it restored from again, so every checkpoint's event is sent at least once and
repeats carry the same event_id. Before a model's trainer is dropped
(revoke, reassignment, partition count change) and at shutdown, the pool
waits for its pending commits and queues their events.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka.partitioner.default import murmur2

from schemas.codec import encode
from schemas.errors import (
    SHUTDOWN_EXCEPTIONS,
    CheckpointNotFoundError,
    ConfigError,
    DriftloopError,
)
from schemas.events import CheckpointEvent, DeadLetter, TrainingExample
from schemas.manifest import CheckpointManifest, encode_manifest
from services.checkpoints.checkpointer import Checkpointer
from services.checkpoints.store import CheckpointStore
from services.deadletters import RawRecord, dead_letter, decode_or_dead_letter
from services.lazy_torch import one_intra_op_thread
from services.learning.config import ModelConfig
from services.learning.store_sink import CheckpointerSink
from services.learning.trainer import CheckpointRecord, OnlineTrainer

log = logging.getLogger(__name__)


#: What the pool asks the agent to publish (through an
#: :class:`~services.publish.base.EventPublisher`, which routes each by its type).
Outgoing = CheckpointEvent | DeadLetter


def partition_of(model: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the key ``model``."""
    hashed: int = murmur2(model.encode("utf-8"))
    return (hashed & 0x7FFFFFFF) % partitions


def checkpoint_event(manifest: CheckpointManifest, location: str) -> CheckpointEvent:
    """The CheckpointEvent announcing a committed ``manifest`` (deterministic event_id)."""
    return CheckpointEvent.new(
        event_id=f"checkpoint:{manifest.version}",
        ts=manifest.created_ts,
        model=manifest.model,
        version=manifest.version,
        parent_version=manifest.parent_version,
        step=manifest.step,
        examples_seen=manifest.examples_seen,
        trigger=manifest.trigger,
        metrics=dict(manifest.metrics),
        location=location,
        manifest_sha256=hashlib.sha256(encode_manifest(manifest)).hexdigest(),
    )


@dataclass
class _Lane:
    """One model: its config, trainer, sink and home partition."""

    config: ModelConfig
    partition: int
    sink: CheckpointerSink
    trainer: OnlineTrainer | None = None
    trained_since_start: bool = False
    #: The last fallback reported (restored version, skipped versions): not repeated.
    reported: tuple[str | None, tuple[str, ...]] | None = None
    #: The trainer the pre-flight restored, untouched, with what its restore read
    #: (:meth:`CheckpointerSink.restore_inputs`); the first assignment takes it
    #: while that is unchanged.
    standby: tuple[OnlineTrainer, tuple[Any, ...]] | None = None


@dataclass
class PoolStats:
    """Counters since the worker started (for logs and benchmarks)."""

    records: int = 0
    trained: int = 0
    #: Records of held-out examples (the models' holdout shares): read, never learned.
    held_out: int = 0
    duplicates: int = 0
    replayed: int = 0
    dead_letters: int = 0
    gaps: int = 0
    #: Restores that fell back from the newest checkpoint to an older one.
    fallbacks: int = 0
    #: Checkpoints skipped by those restores because they did not load.
    restore_failures: int = 0
    checkpoints: list[CheckpointRecord] = field(default_factory=list)


class TrainerPool:
    """The trainers of one worker and the input positions they need.

    Not thread-safe: the agent calls every method from one executor thread,
    in order, so model work never runs on the event loop.

    Parameters
    ----------
    models
        The models to train (each needs its own home partition owned to train).
    store
        The checkpoint store; retention is the store's business.
    topic
        The full name of the ``training-examples`` topic.
    partitions
        Its partition count as configured (for :func:`partition_of`); the
        agent corrects it from broker metadata with :meth:`set_partitions`
        before each assignment, since an existing topic may have another.
    checkpointer
        The checkpointer writing to ``store``; one is built when omitted.
    clock
        Milliseconds since the epoch, for the interval trigger (tests).
    from_scratch
        Ignore every checkpoint the models have now (``driftloop worker
        --from-scratch``): they train from step 0 and offset 0, and their
        first checkpoint is a full one. Checkpoints this pool writes are
        restored as usual on later assignments.

    A pool with a torch model gives torch one intra-op thread, process-wide
    (torch's default is one per core): a micro-batch of the torch example is a
    few small sparse operations, and splitting each over threads only made
    them wait for each other. Measured on the shared 2-core machine
    (``benchmarks.train``'s memory loop, 20,000 examples): 300-600
    examples/s with the default, 12,000-18,000 with one thread.

    Restores fall back: when a model's newest checkpoint does not load
    completely, the newest one that does is restored (each skipped version is
    logged at ERROR and counted in :attr:`PoolStats.fallbacks` /
    :attr:`PoolStats.restore_failures`) and training resumes from its offsets.
    When a model has checkpoints and none loads,
    :class:`~schemas.errors.NoLoadableCheckpointError` propagates from
    :meth:`assign` (and :meth:`preflight`): starting over would silently
    discard what was learned.
    """

    def __init__(
        self,
        models: Iterable[ModelConfig],
        store: CheckpointStore,
        *,
        topic: str,
        partitions: int,
        checkpointer: Checkpointer | None = None,
        clock: Callable[[], int] | None = None,
        from_scratch: bool = False,
    ) -> None:
        self.store = store
        self.topic = topic
        self.partitions = partitions
        self.checkpointer = checkpointer if checkpointer is not None else Checkpointer(store)
        self.clock = clock
        self.lanes = {
            m.name: _Lane(m, partition_of(m.name, partitions), CheckpointerSink(self.checkpointer))
            for m in models
        }
        if any(lane.config.kind == "torch" for lane in self.lanes.values()):
            one_intra_op_thread()
        self.assigned: frozenset[int] = frozenset()
        #: Next offset to hand to the trainers, per owned partition with models.
        self.expected: dict[int, int] = {}
        self.outbox: list[Outgoing] = []
        #: Partitions handed a record past their expected offset since the last
        #: :meth:`take_gaps`, with that offset (the agent seeks them again).
        self.gapped: dict[int, int] = {}
        self.stats = PoolStats()
        if from_scratch:
            for lane in self.lanes.values():
                ignored = lane.sink.start_over(lane.config.name)
                log.warning(
                    "model %s: --from-scratch: ignoring its %d existing checkpoint(s)%s;"
                    " training starts over at step 0 from offset 0",
                    lane.config.name,
                    len(ignored),
                    f" (newest {ignored[0]})" if ignored else "",
                )

    def preflight(self) -> dict[str, str | None]:
        """Find the checkpoint each configured model would restore, before joining Kafka.

        Loads each model's newest loadable checkpoint (falling back and
        logging like :meth:`assign`); returns ``{model: version or None}``.
        The restored trainers are kept, untouched: the first :meth:`assign`
        that owns a model's partition takes its trainer instead of restoring
        again, unless anything its restore read changed since (a version
        committed, removed or damaged, a file of the model's directory
        rewritten: :meth:`CheckpointerSink.restore_inputs`); a later
        assignment restores as usual.

        Raises
        ------
        NoLoadableCheckpointError
            A model has checkpoints but none of them loads.
        """
        found: dict[str, str | None] = {}
        for name, lane in self.lanes.items():
            read = lane.sink.restore_inputs(name)  # before: a change meanwhile differs
            trainer = OnlineTrainer(lane.config, lane.sink, clock=self.clock)
            found[name] = trainer.restore()
            self._report_skipped(lane, trainer)
            if read is not None:
                lane.standby = (trainer, read)
        return found

    # -- assignment ------------------------------------------------------------------------

    def set_partitions(self, partitions: int) -> bool:
        """Use the topic's real partition count (from broker metadata); True if it changed.

        Called before :meth:`assign`. A change moves the models' home
        partitions, so every trainer is dropped (the next :meth:`assign`
        restores them from their checkpoints).
        """
        if partitions < 1:
            raise ConfigError(
                "a topic has at least one partition", topic=self.topic, partitions=partitions
            )
        if partitions == self.partitions:
            return False
        log.warning(
            "topic %s has %d partitions, not the %d configured; models placed accordingly",
            self.topic,
            partitions,
            self.partitions,
        )
        self.partitions = partitions
        for lane in self.lanes.values():
            self._release(lane)
            lane.partition = partition_of(lane.config.name, partitions)
        self.assigned = frozenset()
        self.expected = {}
        return True

    def home_partitions(self) -> set[int]:
        """Partitions holding at least one configured model."""
        return {lane.partition for lane in self.lanes.values()}

    def active(self, partition: int | None = None) -> list[tuple[_Lane, OnlineTrainer]]:
        """Lanes whose trainer runs here (optionally: those homed on ``partition``)."""
        return [
            (lane, lane.trainer)
            for lane in self.lanes.values()
            if lane.trainer is not None and (partition is None or lane.partition == partition)
        ]

    def assign(self, partitions: Iterable[int]) -> dict[int, int]:
        """Take ownership of ``partitions``; return the offset to seek each one to.

        Called on every assignment. When the owned set changed, every owned
        model is rebuilt from its newest checkpoint (in-memory progress since
        then is dropped and redone identically: another worker may have
        trained it meanwhile); when it did not, the trainers keep their state
        and the returned offsets are the next unprocessed ones. Partitions
        without configured models are absent from the result.
        """
        owned = frozenset(partitions)
        if owned == self.assigned and self.expected:
            return dict(self.expected)
        self.assigned = owned
        self.expected = {}
        self.gapped = {}
        for lane in self.lanes.values():
            self._release(lane)
            if lane.partition in owned:
                self._restore(lane)
            lane.standby = None  # only the first assignment may take it
        for part in sorted(owned & self.home_partitions()):
            positions = [t.position(self.topic, part) for _, t in self.active(part)]
            self.expected[part] = min(p or 0 for p in positions)
        return dict(self.expected)

    def take_gaps(self) -> dict[int, int]:
        """Partitions whose last records lay past the offset they need, with that
        offset: ``{partition: expected}``. The list is emptied."""
        gaps, self.gapped = self.gapped, {}
        return {p: o for p, o in gaps.items() if self.expected.get(p) == o}

    def revoke(self, partitions: Iterable[int]) -> None:
        """Stop training the models homed on ``partitions`` (another worker takes
        them over from their newest checkpoint). Called when faust revokes them,
        before any new assignment; nothing is checkpointed: progress since the
        last checkpoint is redone, identically, by the next owner."""
        gone = set(partitions)
        for lane in self.lanes.values():
            lane.standby = None
            if lane.partition in gone:
                self._release(lane)
        self.expected = {p: o for p, o in self.expected.items() if p not in gone}
        self.assigned = self.assigned - gone

    def _release(self, lane: _Lane) -> None:
        """Drop ``lane``'s trainer after its pending commits finished (their events queued):
        the next trainer of the model restores from what is committed."""
        trainer, lane.trainer = lane.trainer, None
        if trainer is not None:
            self._collect(lane, trainer.wait_commits())

    def _report_skipped(self, lane: _Lane, trainer: OnlineTrainer) -> None:
        skipped = trainer.skipped_checkpoints
        if not skipped:
            return
        seen = (trainer.last_version, tuple(skipped))
        if lane.reported == seen:  # the pre-flight check found and reported the same
            return
        lane.reported = seen
        self.stats.fallbacks += 1
        self.stats.restore_failures += len(skipped)
        for version, reason in skipped.items():
            log.error(
                "model %s: checkpoint %s does not load, skipped: %s",
                lane.config.name,
                version,
                reason,
            )
        log.error(
            "model %s: fell back past %d newer checkpoint(s) to %s (step %d); the progress"
            " since then is redone from its offsets %s",
            lane.config.name,
            len(skipped),
            trainer.last_version,
            trainer.step,
            trainer.offsets.get(self.topic, {}),
        )

    def _restore(self, lane: _Lane) -> None:
        lane.trained_since_start = False
        trainer = self._take_standby(lane)
        if trainer is not None:
            version = trainer.last_version
        else:
            trainer = OnlineTrainer(lane.config, lane.sink, clock=self.clock)
            version = trainer.restore()
        lane.trainer = trainer
        if version is None:
            log.info("model %s: no checkpoint yet, training from scratch", lane.config.name)
            return
        self._report_skipped(lane, trainer)
        manifest: CheckpointManifest | None
        try:
            manifest = self.store.open(lane.config.name, version).manifest
        except CheckpointNotFoundError:  # removed since: its event is not repeated
            manifest = None
        log.info(
            "model %s: restored %s (step %d, %d examples), resuming at %s",
            lane.config.name,
            version,
            trainer.step,
            trainer.examples_seen,
            trainer.offsets.get(self.topic, {}),
        )
        if manifest is not None:
            self._announce([manifest])

    def _take_standby(self, lane: _Lane) -> OnlineTrainer | None:
        """The pre-flight's trainer of ``lane`` if what its restore read is unchanged, else None."""
        standby, lane.standby = lane.standby, None
        if standby is None:
            return None
        trainer, read = standby
        if lane.sink.restore_inputs(lane.config.name) != read:
            log.info("model %s: checkpoints changed since the pre-flight", lane.config.name)
            return None
        trainer.restart_clock()  # its wall-clock trigger counts from now, as a restore's
        return trainer

    # -- input -----------------------------------------------------------------------------

    def handle(self, records: Sequence[RawRecord]) -> list[Outgoing]:
        """Feed a chunk of raw records (offset order per partition); return what to send.

        Never raises for bad input: undecodable examples, labels the model
        cannot use and misrouted examples become dead letters. A checkpoint
        that fails to save is logged; the trainer keeps its state and the
        trigger fires again at the next batch boundary.
        """
        for record in records:
            self._handle_one(record)
        return self.drain()

    def _handle_one(self, record: RawRecord) -> None:
        part = record.partition
        expected = self.expected.get(part)
        if expected is None:  # not owned, or no model lives there
            return
        if record.offset < expected:
            self.stats.replayed += 1
            return
        if record.offset > expected:
            # Records fetched before the last seek: the ones we need are re-fetched
            # (the agent seeks again when they do not come: take_gaps).
            self.stats.gaps += 1
            self.gapped[part] = expected
            log.debug("drop %s[%d]@%d, want %d", self.topic, part, record.offset, expected)
            return
        self.expected[part] = record.offset + 1
        self.gapped.pop(part, None)
        self.stats.records += 1
        example = decode_or_dead_letter(TrainingExample, record)
        if isinstance(example, DeadLetter):
            self._dead(example)
            return
        lane = self.lanes.get(example.model)
        if lane is not None and lane.partition != part:
            self._dead(
                dead_letter(
                    record,
                    f"example of model {example.model!r} on partition {part}; its key space is"
                    f" partition {lane.partition} (key training-examples by model)",
                    kind="misrouted",
                    field="model",
                )
            )
            return
        for other, trainer in self.active(part):
            self._feed(other, trainer, example, record)

    def _feed(
        self, lane: _Lane, trainer: OnlineTrainer, example: TrainingExample, record: RawRecord
    ) -> None:
        try:
            outcome = trainer.process(
                example, topic=record.topic, partition=record.partition, offset=record.offset
            )
        except DriftloopError:  # the checkpoint's snapshot; commits are reported next call
            log.exception("model %s: checkpoint failed at %d", lane.config.name, record.offset)
            return
        except BaseException as exc:  # a model that chokes on a record must not stop the agent
            if isinstance(exc, SHUTDOWN_EXCEPTIONS):  # shutdown goes on (Ctrl-C, cancel)
                raise
            # Model code may raise any BaseException (a pyo3 PanicException is one).
            log.exception("model %s: failed on offset %d", lane.config.name, record.offset)
            self._dead(dead_letter(record, exc, kind="processing"))
            return
        for failed in outcome.failed:
            source = RawRecord(
                failed.topic,
                failed.partition,
                failed.offset,
                lane.config.name.encode(),
                encode(failed.example) if isinstance(failed.example, TrainingExample) else None,
            )
            self._dead(dead_letter(source, failed.reason, kind="processing"))
        if outcome.status == "rejected":
            reason = outcome.reason or "example the model cannot learn from"
            bad_field = outcome.field or "label"
            self._dead(dead_letter(record, reason, kind="validation", field=bad_field))
        elif outcome.status == "duplicate":
            self.stats.duplicates += 1
        elif outcome.status == "held_out":
            self.stats.held_out += 1
        elif outcome.status == "trained":
            self.stats.trained += lane.config.batch_size
            if not lane.trained_since_start:
                lane.trained_since_start = True
                log.info("model %s: learning (step %d)", lane.config.name, trainer.step)
        self._collect(lane, outcome.checkpoints)

    def _collect(self, lane: _Lane, records: Iterable[CheckpointRecord]) -> None:
        """Queue the CheckpointEvents of committed checkpoints (in checkpoint order)."""
        for rec in records:
            self.stats.checkpoints.append(rec)
            log.info(
                "model %s: checkpoint %s trigger=%s step=%d examples=%d%s %s",
                lane.config.name,
                rec.version,
                rec.trigger,
                rec.step,
                rec.examples_seen,
                f" coalesced={rec.coalesced}" if rec.coalesced else "",
                " ".join(f"{k}={v:.4f}" for k, v in rec.metrics.items()),
            )
            if rec.manifest is not None:
                self._announce([rec.manifest])

    def _announce(self, manifests: Iterable[CheckpointManifest]) -> None:
        for manifest in manifests:
            location = self.store.hot.location(manifest.model, manifest.version)
            event = checkpoint_event(manifest, location)
            self.outbox.append(event)

    def _dead(self, letter: DeadLetter) -> None:
        self.stats.dead_letters += 1
        self.outbox.append(letter)

    # -- time and stopping ------------------------------------------------------------------

    def tick(self) -> list[Outgoing]:
        """Evaluate wall-clock and requested triggers of every active model (timer)."""
        return self._each(lambda t: t.tick())

    def request_checkpoint(self, model: str, reason: str = "manual request") -> None:
        """Ask ``model``'s trainer for a checkpoint at its next boundary or tick."""
        lane = self.lanes.get(model)
        if lane is not None and lane.trainer is not None:
            lane.trainer.request_checkpoint(reason)

    def request_all(self, reason: str = "manual request") -> None:
        """Ask every model's trainer for a checkpoint (SIGUSR1 on the worker)."""
        for name in self.lanes:
            self.request_checkpoint(name, reason)

    def reconfigure(self, models: Iterable[ModelConfig]) -> list[Outgoing]:
        """Apply new settings to the models this pool trains (SIGHUP on the worker).

        Each active trainer whose settings changed checkpoints first, under
        the old settings (trigger ``config_change``), then switches. A model
        the new configuration drops or redefines (kind, factory, encoding,
        loss, optimizer) keeps its old settings and the refusal is logged:
        a redefined model is a new model, not a new setting.
        """
        given = {m.name: m for m in models}
        for name, lane in self.lanes.items():
            new = given.get(name)
            if new is None:
                log.warning("model %s: not in the new configuration; settings kept", name)
                continue
            try:
                if lane.trainer is not None:
                    self._collect(lane, lane.trainer.reconfigure(new))
                else:
                    # Not trained here now: the next restore builds it with `new`.
                    OnlineTrainer.check_reconfigure(lane.config, new)
                lane.config = new
                log.info("model %s: settings %s applied", name, new.digest()[:12])
            except DriftloopError:
                log.exception("model %s: new settings refused; old ones kept", name)
        return self.drain()

    def shutdown(self) -> list[Outgoing]:
        """Wait for pending commits, then checkpoint unsaved progress of every active
        model and wait for those commits (SIGTERM); then stop taking input. The
        open batches are not trained: their records are re-read on the next start."""
        sends = self._each(lambda t: t.shutdown())
        self.expected = {}
        return sends

    def _each(self, call: Callable[[OnlineTrainer], list[CheckpointRecord]]) -> list[Outgoing]:
        for lane, trainer in self.active():
            try:
                self._collect(lane, call(trainer))
            except DriftloopError:
                log.exception("model %s: checkpoint failed", lane.config.name)
        return self.drain()

    def flush(self) -> list[Outgoing]:
        """Wait for every active model's pending checkpoint commits; return
        everything queued to send (their events included)."""
        for lane, trainer in self.active():
            self._collect(lane, trainer.wait_commits())
        return self.drain()

    def drain(self) -> list[Outgoing]:
        """Everything queued to send, oldest first (the queue is emptied)."""
        out, self.outbox = self.outbox, []
        return out

    def describe(self) -> dict[str, Any]:
        """Per-model progress for logs and ``--json`` output."""
        models: dict[str, Any] = {}
        for name, lane in self.lanes.items():
            t = lane.trainer
            models[name] = {
                "partition": lane.partition,
                "active": t is not None,
                **(
                    {
                        "step": t.step,
                        "examples_seen": t.examples_seen,
                        "held_out": t.held_out,
                        "pending": t.pending,
                        "last_version": t.last_version,
                        "metrics": t.metrics.values(),
                        "schedule": t.schedule.describe(),
                        "commits_pending": t.commits_pending,
                        "checkpoints_coalesced": t.coalesced,
                        "checkpoint_failures": t.checkpoint_failures,
                    }
                    if t is not None
                    else {}
                ),
            }
        return {
            "assigned": sorted(self.assigned),
            "expected": self.expected,
            "models": models,
            "fallbacks": self.stats.fallbacks,
            "restore_failures": self.stats.restore_failures,
        }

    def close(self) -> None:
        """Flush pending saves and stop the checkpointer's saver thread."""
        self.checkpointer.close()
