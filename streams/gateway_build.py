"""Assembling the gateway worker from settings (``driftloop worker --role gateway``).

The parts, each opened the way every other process opens it:

- the evaluator loads versions read-only (:class:`~services.server.loader.StoreLoader`:
  :func:`~services.checkpoints.opener.open_reader`, signature and hashes
  verified before any state is read), as a model server does; the store is
  opened at the first candidate, so the gateway may start before the trainer
  has created it;
- the pointer it changes is the CLI's (:func:`~services.pointer.factory.pointer_for_changes`
  with the store's version check), so a version that is not in the store,
  not verified or quarantined cannot be made live by the gateway either;
- after each change it made, the pointer's outbox is relayed to
  ``version-events`` (:class:`~services.pointer.relay.OutboxRelay`);
- the per-version live metrics go to Redis (``{prefix}{model}:metrics``) at
  most every :data:`METRICS_PUBLISH_S` seconds, where ``driftloop status`` reads them;
- at start, ``version-events`` is read once for the versions a guard rolled
  back (:func:`~services.validation.service.rolled_back_by_guard`), so a
  restarted gateway never promotes them again; when the log cannot be read
  within :data:`LOG_READ_TIMEOUT_S` it starts without them and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import faust

from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_reader
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.learning.adapters import ModelAdapter
from services.learning.buildcheck import check_buildable
from services.learning.config import LearningConfig
from services.pointer.base import PointerUnavailableError
from services.pointer.factory import pointer_for_changes, redis_client
from services.pointer.log import KafkaVersionLog
from services.pointer.relay import OutboxRelay
from services.pointer.validation import StoreVersionCheck
from services.server.loader import StoreLoader
from services.validation.evaluate import StoreEvaluator
from services.validation.live_metrics import LiveMetrics
from services.validation.live_store import LiveMetricsStore
from services.validation.service import Validation, rolled_back_by_guard
from streams.gateway import GatewayAgent

log = logging.getLogger(__name__)

#: Seconds between two writes of the live metrics to Redis.
METRICS_PUBLISH_S = 2.0
#: Seconds the start may spend reading ``version-events`` for earlier rollbacks.
LOG_READ_TIMEOUT_S = 15.0


class _StoreOnFirstUse:
    """The store's loader and version check, opened when first needed.

    The gateway may start before the trainer has created the store; it needs
    the store only once a candidate (a committed checkpoint) exists.
    """

    def __init__(self, store: StoreConfig, learning: LearningConfig) -> None:
        self.store = store
        self.learning = learning
        self._loader: StoreLoader | None = None
        self._check: StoreVersionCheck | None = None

    def load(self, model: str, version: str) -> ModelAdapter:
        if self._loader is None:
            self._loader = StoreLoader(self.store, self.learning)
        return self._loader.load(model, version)

    def check(self, model: str, version: str) -> None:
        if self._check is None:
            self._check = StoreVersionCheck(open_reader(self.store))
        self._check.check(model, version)


def build_gateway(
    app: faust.App,
    topics: TopicsConfig,
    learning: LearningConfig,
    model_names: Sequence[str],
    *,
    store: StoreConfig,
    redis_config: RedisConfig,
    kafka: KafkaConfig,
    tick_interval_s: float = 1.0,
) -> GatewayAgent:
    """The gateway agent for the models named (all of them when empty) on ``app``.

    Raises
    ------
    ConfigError
        A model does not build, the store cannot be opened.
    """
    chosen = [learning.model(n) for n in model_names] if model_names else list(learning.models)
    check_buildable(chosen)
    models = {m.name: m for m in chosen}
    evaluator = StoreEvaluator(_StoreOnFirstUse(store, learning), models)
    pointer = pointer_for_changes(
        store,
        _StoreOnFirstUse(store, learning),
        redis_config=redis_config,
        kafka=kafka,
        topics=topics,
    )
    relay = OutboxRelay(
        redis_client(redis_config),
        key_prefix=redis_config.key_prefix,
        kafka=kafka,
        topic=topics.version_events,
    )
    live_metrics = LiveMetrics(models)
    metrics_store = LiveMetricsStore(
        live_metrics,
        redis_client(redis_config),
        key_prefix=redis_config.key_prefix,
        every_s=METRICS_PUBLISH_S,
    )
    log.info(
        "gateway for %s: %s",
        sorted(models),
        {n: (m.promotion.mode, m.guard.enabled) for n, m in models.items()},
    )
    validation = Validation(models, evaluator, pointer)
    try:
        events = KafkaVersionLog(kafka, topics.version_events, timeout_s=LOG_READ_TIMEOUT_S)
        earlier = rolled_back_by_guard(events.events())
    except PointerUnavailableError as exc:
        log.warning(
            "cannot read %s for earlier rollbacks by the guard (%s): the gateway starts"
            " without them, and could promote such a version again",
            topics.version_events,
            exc,
        )
    else:
        validation.remember(earlier)
        log.info("versions rolled back by the guard before this start: %s", earlier or "none")
    return GatewayAgent(
        app,
        topics,
        validation,
        live_metrics=live_metrics,
        on_change=relay.relay_pending,
        publish_metrics=lambda: metrics_store.publish(time.time()),
        tick_interval_s=tick_interval_s,
    )
