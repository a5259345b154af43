"""Building a model server from settings: the one place its real parts are chosen.

:func:`make_publisher` makes the event publisher (inference logs, feedback);
:func:`build_server` opens the store read-only, connects to Redis and returns
the :class:`~services.server.app.ServerContext` the app serves from.

The publisher is :class:`~services.publish.spooled.SpooledPublisher` over
Kafka: ``publish`` (inference logs) never waits for the broker, and while the
broker is away events go to a local spool (``DRIFTLOOP_SERVER_SPOOL_DIR``)
and are sent, in order, when it returns; ``publish_acked`` (feedback) returns
once the broker acknowledged or the spool fsynced. Its metrics
(``driftloop_publish_*``) are in the server's ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.checkpoints.config import StoreConfig
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.learning.config import LearningConfig
from services.pointer.factory import redis_client
from services.pointer.redis import RedisPointerReader
from services.pointer.relay import OutboxRelay
from services.publish.spooled import SpooledPublisher
from services.server.app import LogPublisher, ServerContext
from services.server.config import ServerConfig
from services.server.follower import PointerFollower
from services.server.loader import StoreLoader
from services.server.metrics import ServerMetrics
from services.server.redis_pointer import RedisEpochReporter, RedisHints
from services.server.registry import LoadFailure, ModelRegistry
from services.server.relaying import PeriodicRelay

log = logging.getLogger(__name__)

#: How long one relay waits for the broker (a stuck one delays only the relay thread).
RELAY_TIMEOUT_S = 10.0


#: How long inference logs gather into one produce batch (a joiner tolerates logs that
#: come tens of ms late; feedback, acknowledged to its caller, never waits for it).
LOG_GATHER_S = 0.02


def make_publisher(
    kafka: KafkaConfig, topics: TopicsConfig, spool_dir: Path, registry: CollectorRegistry
) -> LogPublisher:
    """The server's event publisher: spooled, metrics in the server's ``registry``."""
    return SpooledPublisher.for_kafka(
        kafka, spool_dir, topics=topics, gather_s=LOG_GATHER_S, registry=registry
    )


def _count_failures(metrics: ServerMetrics, model: str) -> Callable[[LoadFailure], None]:
    def count(failure: LoadFailure) -> None:
        metrics.load_failures.labels(model).inc()

    return count


def build_server(
    server: ServerConfig,
    learning: LearningConfig,
    store: StoreConfig,
    redis_config: RedisConfig,
    publisher: Callable[[CollectorRegistry], LogPublisher],
    *,
    models: tuple[str, ...] = (),
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
) -> ServerContext:
    """The context of a real server: store read-only, pointer and hints from Redis.

    The follower also relays the pointer outbox to ``version-events`` (of
    ``kafka`` / ``topics``, default the environment) every
    ``server.relay_interval_s`` (:mod:`services.server.relaying`).

    ``publisher`` is called last, once the models and the store checked out, with
    the registry ``/metrics`` exposes.
    ``models``: serve only these models of ``learning`` (all when empty).

    Raises
    ------
    ConfigError
        A named model is not configured, or Redis is not configured.
    CheckpointNotFoundError
        There is no store at ``store.root``.
    """
    names = models or tuple(m.name for m in learning.models)
    for name in names:
        learning.model(name)  # ConfigError for an unknown name
    loader = StoreLoader(store, learning)
    metrics = ServerMetrics()
    registries = {
        name: ModelRegistry(
            name,
            loader,
            resident=server.resident_versions,
            on_failure=_count_failures(metrics, name),
        )
        for name in names
    }
    client = redis_client(redis_config)
    prefix = redis_config.key_prefix
    follower = PointerFollower(
        registries,
        RedisPointerReader(client, key_prefix=prefix),
        poll_interval_s=server.poll_interval_s,
        hints=RedisHints(lambda: redis_client(redis_config), prefix, names),
        reporter=RedisEpochReporter(client, prefix, server.server_id),
        report_interval_s=server.report_interval_s,
        relay=PeriodicRelay(
            OutboxRelay(
                client,
                key_prefix=prefix,
                kafka=kafka if kafka is not None else KafkaConfig(),
                topic=(topics if topics is not None else TopicsConfig()).version_events,
                timeout_s=RELAY_TIMEOUT_S,
            ),
            interval_s=server.relay_interval_s,
            metrics=metrics,
        ),
    )
    made = publisher(metrics.registry)
    closers: list[Callable[[], None]] = [loader.close, client.close]
    close = getattr(made, "close", None)
    if callable(close):
        closers.insert(0, close)
    return ServerContext(
        config=server,
        registries=registries,
        publisher=made,
        metrics=metrics,
        follower=follower,
        closers=closers,
    )
