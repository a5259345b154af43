"""The demo's pointer changes, made the way ``driftloop promote`` / ``rollback`` make them.

:class:`DemoPromoter` does what the CLI's change commands do
(:mod:`services.cli.pointer_commands`), with the demo's settings instead of
the environment: open the store read-only, build the pointer with
:func:`~services.pointer.factory.pointer_for_changes` (the store's version
check, the ``version-events`` log, the store's rollback depth), make the
change (one compare-and-set on the epoch), then relay the outbox to
``version-events`` (:func:`~services.pointer.relay.relay_pending`). Every
change is recorded with its actor (default ``demo``) and the reason it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.events import VersionEvent
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.learning.config import LearningConfig
from services.pointer.factory import pointer_for_changes
from services.pointer.redis import RedisPointer
from services.pointer.relay import relay_pending
from services.pointer.validation import StoreVersionCheck

ACTOR = "demo"


class DemoPromoter:
    """Promotes and rolls back one deployment's pointers (see the module docstring)."""

    def __init__(
        self,
        store: StoreConfig,
        learning: LearningConfig,
        *,
        redis: RedisConfig,
        kafka: KafkaConfig,
        topics: TopicsConfig,
    ) -> None:
        self.store = store
        self.learning = learning
        self.redis = redis
        self.kafka = kafka
        self.topics = topics
        self.unrelayed = 0
        """Changes whose event was still in the Redis outbox after the change's own relay."""

    def promote(self, model: str, version: str, reason: str, *, actor: str = ACTOR) -> VersionEvent:
        """Make ``version`` live (refused unless it is in the store and verifies)."""
        return self._apply(lambda p: p.promote(model, version, actor=actor, reason=reason))

    def rollback(self, model: str, reason: str, *, actor: str = ACTOR) -> VersionEvent:
        """Make the previous live version live again."""
        return self._apply(lambda p: p.rollback(model, actor=actor, reason=reason))

    def _apply(self, change: Callable[[RedisPointer], VersionEvent]) -> VersionEvent:
        with open_store(self.store, self.learning, read_only=True) as s:
            pointer = pointer_for_changes(
                self.store,
                StoreVersionCheck(s.reader),
                redis_config=self.redis,
                kafka=self.kafka,
                topics=self.topics,
            )
            try:
                event = change(pointer)
                result = relay_pending(
                    self.redis, self.kafka, self.topics, client=pointer.client, wait_s=10.0
                )
                self.unrelayed = result.left
            finally:
                pointer.client.close()
        return event
