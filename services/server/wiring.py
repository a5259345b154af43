"""Building a model server from settings: the one place its real parts are chosen.

:func:`make_publisher` makes the event publisher (inference logs, feedback);
:func:`build_server` opens the store read-only, connects to Redis and returns
the :class:`~services.server.app.ServerContext` the app serves from.

The publisher: until ``services.publish`` ships its Kafka publisher with a
bounded batching buffer and a local spool, :class:`InterimKafkaPublisher`
(kafka-python, ``acks=all``, kafka-python's own bounded buffer) stands in. It
has **no spool**: ``publish_acked`` returns only once the broker acknowledged,
so ``POST /v1/feedback`` answers 503 while the broker is away, and inference
logs queued while it is away are lost once kafka-python gives up on them
(counted, logged). Switching is one line in :func:`make_publisher`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import redis
from kafka.errors import KafkaError

from schemas import limits as L
from schemas.codec import encode
from schemas.errors import BrokerError
from schemas.events import Event
from services.checkpoints.config import StoreConfig
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import make_producer
from services.learning.config import LearningConfig
from services.publish.base import DurablePublisher, PublishError, route
from services.server.app import ServerContext
from services.server.config import ServerConfig
from services.server.follower import PointerFollower
from services.server.loader import StoreLoader
from services.server.metrics import ServerMetrics
from services.server.redis_pointer import RedisEpochReporter, RedisHints, RedisPointerReader
from services.server.registry import LoadFailure, ModelRegistry

log = logging.getLogger(__name__)


class InterimKafkaPublisher:
    """A :class:`DurablePublisher` over kafka-python, without a spool (see the module notes).

    ``publish`` queues in kafka-python's producer, at most ``max_pending``
    unacknowledged events (kafka-python 3 has no byte bound of its own): it
    blocks at most ``max_block_s`` while that many are pending or the broker is
    unknown, then raises :class:`PublishError`;
    ``flush`` raises :class:`PublishError` for the events that failed since the
    last flush.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        *,
        max_block_s: float = 5.0,
        max_pending: int = 50_000,
        bootstrap_timeout_s: float = 30.0,
    ) -> None:
        self.topics = topics
        self.max_block_s = max_block_s
        self._slots = threading.BoundedSemaphore(max_pending)
        try:
            self._producer = make_producer(
                kafka,
                linger_ms=5,
                max_block_ms=int(max_block_s * 1000),
                retries=5,
                bootstrap_timeout_ms=int(bootstrap_timeout_s * 1000),
            )
        except KafkaError as exc:
            raise BrokerError(
                f"cannot reach Kafka for the server's publisher: {exc}", bootstrap=kafka.bootstrap
            ) from None
        self._lock = threading.Lock()
        self._failed = 0
        self._first_cause: str | None = None

    def _send(self, event: Event) -> Any:
        topic, key = route(event, self.topics)
        value = encode(event)
        if len(value) > L.MAX_RECORD_VALUE_BYTES:
            raise PublishError("event over the record size limit", topic=topic, size=len(value))
        if not self._slots.acquire(timeout=self.max_block_s):
            raise PublishError("publish buffer full (broker not acknowledging)", topic=topic)
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            self._slots.release()
            raise PublishError(f"not queued: {exc}", topic=topic) from exc
        future.add_both(lambda _: self._slots.release())
        return future

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            self._first_cause = self._first_cause or f"{type(exc).__name__}: {exc}"

    def publish(self, event: Event) -> None:
        self._send(event).add_errback(self._on_error)

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise PublishError(f"flush failed: {exc}") from exc
        with self._lock:
            failed, cause = self._failed, self._first_cause
            self._failed, self._first_cause = 0, None
        if failed:
            raise PublishError(f"{failed} events not acknowledged; first: {cause}")

    def publish_acked(self, events: list[Event], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        futures = [self._send(e) for e in events]
        self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        for future in futures:
            try:
                future.get(timeout=max(0.001, deadline - time.monotonic()))
            except (KafkaError, FutureTimeout) as exc:
                raise PublishError(f"not acknowledged within {timeout_s} s: {exc}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.close(timeout=timeout_s)


def make_publisher(kafka: KafkaConfig, topics: TopicsConfig) -> DurablePublisher:
    """The server's event publisher (the one line to switch to ``services.publish``'s)."""
    return InterimKafkaPublisher(kafka, topics)


def _count_failures(metrics: ServerMetrics, model: str) -> Callable[[LoadFailure], None]:
    def count(failure: LoadFailure) -> None:
        metrics.load_failures.labels(model).inc()

    return count


def redis_client(config: RedisConfig) -> redis.Redis[str]:
    client: redis.Redis[str] = redis.Redis.from_url(config.url, **config.client_options())
    return client


def build_server(
    server: ServerConfig,
    learning: LearningConfig,
    store: StoreConfig,
    redis_config: RedisConfig,
    publisher: Callable[[], DurablePublisher],
    *,
    models: tuple[str, ...] = (),
) -> ServerContext:
    """The context of a real server: store read-only, pointer and hints from Redis.

    ``publisher`` is called last, once the models and the store checked out.
    ``models``: serve only these models of ``learning`` (all when empty).

    Raises
    ------
    ConfigError
        A named model is not configured, or Redis is not configured.
    CheckpointNotFoundError
        There is no store at ``store.root``.
    BrokerError
        The publisher cannot reach Kafka.
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
        RedisPointerReader(client, prefix),
        poll_interval_s=server.poll_interval_s,
        hints=RedisHints(lambda: redis_client(redis_config), prefix, names),
        reporter=RedisEpochReporter(client, prefix, server.server_id),
        report_interval_s=server.report_interval_s,
    )
    return ServerContext(
        config=server,
        registries=registries,
        publisher=publisher(),
        metrics=metrics,
        follower=follower,
    )
