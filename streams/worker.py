"""One faust worker running the joiner, the trainer, both, or the gateway (``driftloop worker``).

:func:`build` assembles the app: the attribution joiner
(:class:`streams.joiner.JoinerWorker`) and/or the online trainer
(:class:`streams.trainer.TrainerAgent` over a :class:`~services.learning.pool.TrainerPool`
writing to the checkpoint store with the retention of the model
configuration) for ``joiner``, ``trainer`` and ``all``; the validation
gateway and guard (:class:`streams.gateway.GatewayAgent`) for ``gateway``,
always in a process and consumer group of its own (see that module).
:func:`run` starts it with ``faust.Worker``, which stops it cleanly on
SIGINT/SIGTERM (the trainer takes its shutdown checkpoints) and exits the
process.

Settings come from the environment: ``DRIFTLOOP_KAFKA_*``, ``DRIFTLOOP_TOPIC_*``,
``DRIFTLOOP_REDIS_*`` (the version pointer, optional), ``DRIFTLOOP_STORE_*``,
``DRIFTLOOP_CHECKPOINTER_*``, ``DRIFTLOOP_JOIN_*`` and :class:`WorkerConfig`
(``DRIFTLOOP_WORKER_*``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import faust
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError, DriftloopError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import ensure_topics
from services.learning.buildcheck import check_buildable
from services.learning.config import LearningConfig, ModelConfig, load_config
from services.learning.pool import TrainerPool
from services.pointer.factory import lazy_references_from_env
from services.stack.workdirs import WorkDir, remove_stale
from streams.app import make_app, make_worker
from streams.trainer import TrainerAgent

if TYPE_CHECKING:
    from services.pointer.relay import OutboxRelay, RelayResult
    from streams.gateway import GatewayAgent

log = logging.getLogger(__name__)

Role = Literal["joiner", "trainer", "gateway", "all"]
ROLES: tuple[str, ...] = ("joiner", "trainer", "gateway", "all")


class WorkerConfig(BaseSettings):
    """How a worker runs (``DRIFTLOOP_WORKER_*``).

    ``app_id`` is the consumer group (default ``<topic prefix>driftloop-<role>``);
    ``models`` the TOML model configuration the trainer reads when no
    ``--config`` is given; ``datadir`` faust's local directory (default: a
    fresh temporary one). ``tick_interval_s`` is how often the trainer checks
    its wall-clock triggers; ``chunk`` / ``chunk_wait_s`` how many records it
    hands to the model thread at once and how long it waits to fill a chunk.
    ``commit_interval_s`` how often faust commits consumed offsets to the group
    (faust's default when unset); they serve lag monitoring only, the trainer
    resumes from its checkpoints' offsets. Times lie between 1 ms and a day.
    ``metrics_port`` (with ``metrics_host``, default loopback): the gateway
    serves its Prometheus text at ``GET /metrics`` there (0: a free port,
    logged); unset: not served.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_WORKER_", frozen=True, extra="ignore")

    app_id: str | None = None
    models: Path | None = None
    datadir: Path | None = None
    tick_interval_s: float = Field(default=1.0, ge=0.001, le=86_400)
    chunk: int = Field(default=500, ge=1)
    chunk_wait_s: float = Field(default=0.05, ge=0.001, le=86_400)
    commit_interval_s: float | None = Field(default=None, ge=0.001, le=86_400)
    log_level: str = "info"
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65_535)


@dataclass
class BuiltWorker:
    """A ready app and the parts on it (None when the role does not run them)."""

    app: faust.App
    role: Role
    trainer: TrainerAgent | None
    joiner: object | None
    gateway: object | None = None
    #: faust's datadir when this worker made it (removed on exit), else None.
    workdir: WorkDir | None = None
    #: One relay of the pointer outbox, as the worker's timer runs it (None without Redis).
    relay_tick: Callable[[], Awaitable[None]] | None = None


def select_models(learning: LearningConfig, names: Sequence[str]) -> list[ModelConfig]:
    """The models of ``learning`` named in ``names`` (all of them when empty)."""
    if not names:
        return list(learning.models)
    return [learning.model(name) for name in names]


def build(
    role: Role,
    *,
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
    worker: WorkerConfig | None = None,
    models_path: Path | None = None,
    model_names: Sequence[str] = (),
    store: StoreConfig | None = None,
    checkpointer: CheckpointerConfig | None = None,
    from_scratch: bool = False,
    redis_config: RedisConfig | None = None,
) -> BuiltWorker:
    """Assemble the app for ``role`` from settings (environment when omitted).

    Before anything joins Kafka, the trainer finds the checkpoint each
    configured model will resume from (:meth:`TrainerPool.preflight`): a
    model whose checkpoints all fail to load stops the start-up here, unless
    ``from_scratch`` (``--from-scratch``) says to ignore its checkpoints.
    Stale datadirs of killed workers are removed (never a live one's).
    With a Redis URL (``DRIFTLOOP_REDIS_URL``, or ``redis_config``) the
    version pointer is the store's reference source (GC and tiering keep
    what it names; a pointer that cannot be read aborts that GC run), and the
    worker relays pending pointer changes to ``version-events`` every
    :data:`RELAY_INTERVAL_S` seconds (:func:`services.pointer.relay.relay_pending`).

    Raises
    ------
    ConfigError
        Unknown role, a trainer without a model configuration or models,
        a bad model configuration or retention table, a trainer without a
        checkpoint signing key.
    NoLoadableCheckpointError
        A model has checkpoints and none of them loads.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown worker role {role!r}; one of {list(ROLES)}")
    log.info("worker %s: building (pid %d)", role, os.getpid())
    kafka = kafka if kafka is not None else KafkaConfig()
    topics = topics if topics is not None else TopicsConfig()
    worker = worker if worker is not None else WorkerConfig()
    app_id = worker.app_id or f"{topics.prefix}driftloop-{role}"
    workdir: WorkDir | None = None
    if worker.datadir is not None:
        datadir = worker.datadir
    else:
        for stale in remove_stale(f"driftloop-{role}-"):
            log.info("removed the datadir of a stopped worker: %s", stale)
        workdir = WorkDir(f"driftloop-{role}-")
        datadir = workdir.path
    extra: dict[str, Any] = {}
    if worker.commit_interval_s is not None:
        extra["broker_commit_interval"] = worker.commit_interval_s
    app = make_app(app_id, kafka, datadir=datadir, topics=topics, **extra)
    wanted = [topics.training_examples, topics.dead_letters]
    redis_config = redis_config if redis_config is not None else RedisConfig()
    relay_tick = None
    if redis_config.url:
        relay_tick = install_relay(app, redis_config, kafka, topics)
        wanted.append(topics.version_events)
    trainer: TrainerAgent | None = None
    joiner: object | None = None
    if role in ("joiner", "all"):
        from services.attribution import JoinerConfig
        from streams.joiner import JoinerWorker

        joiner = JoinerWorker(app, topics, JoinerConfig())
        wanted += [
            topics.inference_logs,
            topics.feedback,
            topics.join_repartition,
            topics.shadow_scores,
        ]
        log.info("joiner on %s + %s", topics.inference_logs, topics.feedback)
    if role in ("trainer", "all"):
        path = models_path or worker.models
        if path is None:
            raise ConfigError(
                "the trainer needs a model configuration (--config or DRIFTLOOP_WORKER_MODELS)"
            )
        learning = load_config(path)
        chosen = select_models(learning, model_names)
        if not chosen:
            raise ConfigError("the model configuration declares no model", path=str(path))
        check_buildable(chosen)  # config errors now, before topics or the group
        store_config = store if store is not None else StoreConfig()
        references = lazy_references_from_env(
            store_config, redis_config, kafka=kafka, topics=topics
        )
        checkpoint_store = open_store(store_config, learning, references=references)
        checkpoint_store.require_signer()  # a writer without a key refuses to start
        pool = TrainerPool(
            chosen,
            checkpoint_store,
            topic=topics.training_examples,
            partitions=topics.partitions,
            checkpointer=Checkpointer(checkpoint_store, checkpointer),
            from_scratch=from_scratch,
        )
        try:
            resumes = pool.preflight()  # before joining Kafka: a store that cannot work fails now
        except BaseException:
            pool.close()
            if workdir is not None:
                workdir.remove()
            raise
        log.info("trainer resumes %s", resumes)
        trainer = TrainerAgent(
            app,
            topics,
            pool,
            tick_interval_s=worker.tick_interval_s,
            chunk=worker.chunk,
            chunk_wait_s=worker.chunk_wait_s,
            reload=lambda: select_models(load_config(path), model_names),
        )
        wanted.append(topics.checkpoint_events)
        log.info(
            "trainer for %s (store %s) on %s",
            {m.name: pool.lanes[m.name].partition for m in chosen},
            store_config.root,
            topics.training_examples,
        )
    gateway: GatewayAgent | None = None
    if role == "gateway":
        if not redis_config.url:
            raise ConfigError(
                "the gateway changes the version pointer: it needs DRIFTLOOP_REDIS_URL"
            )
        models_file = models_path or worker.models
        if models_file is None:
            raise ConfigError(
                "the gateway needs a model configuration (--config or DRIFTLOOP_WORKER_MODELS)"
            )
        from streams.gateway_build import build_gateway

        gateway = build_gateway(
            app,
            topics,
            load_config(models_file),
            model_names,
            store=store if store is not None else StoreConfig(),
            redis_config=redis_config,
            kafka=kafka,
            tick_interval_s=worker.tick_interval_s,
        )
        wanted += [topics.checkpoint_events, topics.verdicts, topics.shadow_scores]
        if worker.metrics_port is not None:
            from services.metrics_http import serve_metrics

            agent = gateway
            server = serve_metrics(
                lambda: agent.metrics_text, host=worker.metrics_host, port=worker.metrics_port
            )
            log.info("gateway metrics at http://%s:%d/metrics", *server.server_address[:2])
    ensure_topics(kafka, wanted, topics)
    return BuiltWorker(
        app=app,
        role=role,
        trainer=trainer,
        joiner=joiner,
        gateway=gateway,
        workdir=workdir,
        relay_tick=relay_tick,
    )


#: Seconds between two relays of the pointer outbox by a worker.
RELAY_INTERVAL_S = 5.0


def install_relay(
    app: faust.App,
    redis_config: RedisConfig,
    kafka: KafkaConfig,
    topics: TopicsConfig,
    *,
    interval_s: float = RELAY_INTERVAL_S,
) -> Callable[[], Awaitable[None]]:
    """Relay pending pointer changes to ``version-events`` on a faust timer (off the loop).

    A failed relay is logged and retried at the next tick; the entries stay
    in the outbox meanwhile. Returns the timer's function (one relay). The
    relay and its Redis client are made at the first tick, off the loop: the
    worker imports redis then, not before it learns.
    """
    relays: list[OutboxRelay] = []

    def relay_pending() -> RelayResult:
        if not relays:
            from services.pointer.factory import redis_client
            from services.pointer.relay import OutboxRelay

            relays.append(
                OutboxRelay(
                    redis_client(redis_config),
                    key_prefix=redis_config.key_prefix,
                    kafka=kafka,
                    topic=topics.version_events,
                )
            )
        return relays[0].relay_pending()

    async def relay_pointer_outbox() -> None:
        try:
            result = await asyncio.to_thread(relay_pending)
        except DriftloopError as exc:
            log.warning("pointer outbox relay failed (retried in %ss): %s", interval_s, exc)
            return
        if result.sent or result.duplicates:
            log.info(
                "relayed %d pointer changes (%d already logged)", result.sent, result.duplicates
            )

    app.timer(interval_s, name="pointer-outbox-relay")(relay_pointer_outbox)
    return relay_pointer_outbox


def run(built: BuiltWorker, *, log_level: str = "info") -> None:
    """Run the worker until SIGINT/SIGTERM, then exit the process (faust's Worker does).

    Exits with code 2 and the error on stderr when the trainer found, at an
    assignment, that a model's checkpoints exist but none loads (faust itself
    would exit 1 after its crash log). The datadir this worker made is
    removed on the way out.
    """
    try:
        make_worker(built.app, loglevel=log_level).execute_from_commandline()
    except SystemExit:
        fatal = built.trainer.fatal if built.trainer is not None else None
        if fatal is None:
            raise
        print(f"error: {fatal}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if built.workdir is not None:
            built.workdir.remove()
