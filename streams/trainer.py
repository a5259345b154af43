"""The online trainer as a faust agent: ``training-examples`` in, checkpoints out.

Faust wiring only (STYLE.md: agents decode, call a service, emit): the logic
lives in :class:`services.learning.pool.TrainerPool`. :class:`TrainerAgent`
hands it chunks of raw records on one executor thread (model work never runs
on the event loop), sends what it returns (dead letters, CheckpointEvents),
runs a timer for wall-clock triggers, seeks each owned partition to the
offsets recorded in its models' checkpoints after every assignment (see the
pool's module docstring for why that gives exactly-once model state), and
takes the shutdown checkpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import faust
from faust.types import TP

from schemas.errors import DriftloopError, NoLoadableCheckpointError
from services.config import TopicsConfig
from services.deadletters import RawRecord
from services.learning.buildcheck import check_buildable
from services.learning.config import ModelConfig
from services.learning.pool import Outgoing, TrainerPool
from services.publish.faust import FaustPublisher

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_checked(reload: Callable[[], Iterable[ModelConfig]]) -> list[ModelConfig]:
    """The models ``reload`` reads, each built once (throwaway) to prove it can be.

    The checks of a worker's start-up, for a SIGHUP reload: the caller applies
    nothing when this raises.

    Raises
    ------
    DriftloopError
        The configuration does not load, or a model of it does not build.
    """
    models = list(reload())
    check_buildable(models)
    return models


class TrainerAgent:
    """The trainer's agent, timer and hooks on a faust app.

    Parameters
    ----------
    app
        The faust app (its id is the consumer group).
    topics
        Topic names.
    pool
        The trainers.
    tick_interval_s
        How often wall-clock and manual triggers are evaluated.
    chunk
        Records handed to the model thread at once (at most); the agent waits
        at most ``chunk_wait_s`` to fill a chunk.
    reload
        Reads the model configuration again; called on SIGHUP. The models it
        returns are built once first (:func:`load_checked`, the checks of a
        worker's start-up): when that fails, the error is logged and the
        running settings stay. Otherwise every model whose settings changed
        checkpoints under its old settings (trigger ``config_change``) and
        switches. None: SIGHUP is ignored.

    Signals, once the worker runs: SIGUSR1 asks every model for a
    checkpoint (trigger ``manual``, taken at the next tick or batch end);
    SIGHUP reloads the configuration as above. (mode's own SIGUSR1 handler,
    a stack dump, is replaced.)
    """

    def __init__(
        self,
        app: faust.App,
        topics: TopicsConfig,
        pool: TrainerPool,
        *,
        tick_interval_s: float = 1.0,
        chunk: int = 500,
        chunk_wait_s: float = 0.05,
        reload: Callable[[], Iterable[ModelConfig]] | None = None,
    ) -> None:
        self.app = app
        self.reload = reload
        self._reload_task: asyncio.Future[None] | None = None
        self.topics = topics
        self.pool = pool
        self.chunk = chunk
        self.chunk_wait_s = chunk_wait_s
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trainer")
        self._stopping = False
        self._caught_up: set[int] = set()
        self._reseeks: dict[int, float] = {}
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
        self.source = app.topic(topics.training_examples, value_serializer="raw", **raw)
        #: Where CheckpointEvents and dead letters go (topic and key by event type).
        self.publisher = FaustPublisher(app, topics)
        app.agent(self.source, name="online-trainer")(self._agent)
        app.timer(tick_interval_s, name="trainer-tick")(self._tick)
        app.on_partitions_assigned.connect(self._install_seek)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        app.task(self._install_signals)
        self._seek_installed = False
        #: Set when a model's checkpoints all failed to load at an assignment: the
        #: worker then stops and exits 2 with it (:func:`streams.worker.run`).
        self.fatal: NoLoadableCheckpointError | None = None

    async def _install_signals(self, *_app: Any) -> None:
        """Started with the app (after mode installed its own handlers)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._on_manual_request)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_request)

    def _on_manual_request(self) -> None:
        log.info("SIGUSR1: checkpoint requested for every model")
        self.pool.request_all("SIGUSR1")  # taken on the model thread at the next tick

    def _on_reload_request(self) -> None:
        if self.reload is None:
            log.warning("SIGHUP: no configuration file to reload")
            return
        self._reload_task = asyncio.ensure_future(self._reconfigure(self.reload))

    async def _reconfigure(self, reload: Callable[[], Iterable[ModelConfig]]) -> None:
        try:
            models = await self._run(load_checked, reload)
        except DriftloopError as exc:
            log.error("SIGHUP: new configuration refused, running settings kept: %s", exc)
            return
        log.info("SIGHUP: applying %d model configuration(s)", len(models))
        await self._send(await self._run(self.pool.reconfigure, models))

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call, *args)

    async def _install_seek(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        """Called by faust when partitions are assigned, before streams resume:
        wrap ``consumer.perform_seek`` (faust's seek to committed offsets, run
        at the end of every rebalance) so that our seek to checkpointed
        offsets follows it. Installed once, synchronously, so it is in place
        before recovery reaches ``perform_seek``."""
        if self._seek_installed:
            return
        consumer = self.app.consumer
        original = consumer.perform_seek

        async def perform_seek() -> None:
            await original()
            await self._seek_to_checkpoints()

        consumer.perform_seek = perform_seek  # type: ignore[method-assign]  # instance override
        self._seek_installed = True

    async def _on_revoked(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        """Called by faust when partitions are revoked (after in-flight records were
        handled): the models homed there stop here. A failure crashes the worker."""
        revoked = args[0] if args else kwargs.get("revoked", set())
        topic = self.topics.training_examples
        parts = {tp.partition for tp in revoked if tp.topic == topic}
        if parts and not self._stopping:
            await self._run(self.pool.revoke, parts)
            log.info("trainer released partitions %s", sorted(parts))

    async def _seek_to_checkpoints(self) -> None:
        """Restore the owned models and seek their partitions to the recorded offsets.

        The models' home partitions follow the topic's partition count as the
        consumer's metadata has it (not ``DRIFTLOOP_TOPIC_PARTITIONS``).

        A failure (store unreadable) propagates into faust's rebalance, which
        crashes the worker: training from the wrong position is worse.
        """
        consumer = self.app.consumer
        topic = self.topics.training_examples
        owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
        count = consumer.topic_partitions(topic)  # the group's metadata for the topic
        if count:
            await self._run(self.pool.set_partitions, count)
        else:
            log.warning(
                "no partition count for %s in the consumer's metadata; using the configured %d",
                topic,
                self.pool.partitions,
            )
        try:
            targets = await self._run(self.pool.assign, owned)
        except NoLoadableCheckpointError as exc:
            log.critical("trainer stops: %s", exc)
            self.fatal = exc
            raise
        for part, offset in sorted(targets.items()):
            await consumer.seek(TP(topic, part), offset)
            self._reseeks[part] = time.monotonic()  # gaps seen meanwhile: this seek's
        self._caught_up = set()
        log.info("trainer owns partitions %s; seek %s", sorted(owned), targets)
        await self._send(self.pool.drain())

    async def _agent(self, stream: Any) -> Any:
        async for events in stream.take_events(self.chunk, within=self.chunk_wait_s):
            if self._stopping:
                continue
            records = [RawRecord.of(event.message) for event in events]
            await self._send(await self._run(self.pool.handle, records))
            await self._seek_gaps()
            self._report_caught_up()
            yield None

    async def _seek_gaps(self) -> None:
        """Seek again each partition whose last records lay past the offset its
        models need, at most once a second per partition.

        Records fetched before a seek are dropped by the transport
        (:mod:`streams.kafka_compat`), so this should not fire; when records
        are skipped anyway the trainer would otherwise wait for the offset
        it needs for ever, and drop every later record."""
        now = time.monotonic()
        for part, offset in sorted((await self._run(self.pool.take_gaps)).items()):
            if now - self._reseeks.get(part, -1e9) < 1.0:
                continue
            self._reseeks[part] = now
            log.warning(
                "trainer: partition %d handed records past offset %d, which it needs; seek again",
                part,
                offset,
            )
            await self.app.consumer.seek(TP(self.topics.training_examples, part), offset)

    def _report_caught_up(self) -> None:
        """Log once per assignment when a model partition reaches its high watermark
        (as carried by fetch responses; ``end_offsets`` is wrong on Tansu)."""
        for part, nxt in self.pool.expected.items():
            if part in self._caught_up:
                continue
            tp = TP(self.topics.training_examples, part)
            highwater = self.app.consumer.highwater(tp)
            if highwater is not None and nxt >= highwater:
                self._caught_up.add(part)
                log.info("trainer caught up: partition %d at offset %d", part, nxt)

    async def _tick(self, *_app: Any) -> None:
        """Timer (faust passes the app): wall-clock / manual triggers, on the model thread."""
        if not self._stopping:
            await self._send(await self._run(self.pool.tick))

    async def _send(self, events: list[Outgoing]) -> None:
        for event in events:
            await self.publisher.send(event)

    async def _on_shutdown(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        """Called by faust when the app stops (SIGTERM/SIGINT), after the consumer
        stopped and before the producer's last flush: wait for pending
        checkpoint commits, take the shutdown checkpoints (waiting for their
        commits too), publish their events and wait for the broker's
        acknowledgement of everything published. A failure is logged (a
        CheckpointEvent lost here is published again from the restored
        checkpoint at the next start)."""
        self._stopping = True
        try:
            await self._send(await self._run(self.pool.shutdown))
            await self._run(self.pool.close)
        except Exception:
            log.exception("trainer shutdown checkpoint failed")
        finally:
            self._executor.shutdown(wait=True)
        try:
            await self.publisher.aflush(timeout_s=30.0)
        except Exception:
            log.exception("trainer: events not acknowledged at shutdown")
        log.info("trainer stopped: %s", self.pool.describe()["models"])
