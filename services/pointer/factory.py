"""Building pointers from settings, the same way in every process.

- :func:`redis_client`: a redis-py client from :class:`~services.config.RedisConfig`;
- :func:`references_from_env`: the pointer as GC's and tiering's
  :class:`~services.checkpoints.retention.ReferenceSource` when a Redis URL
  is configured (``DRIFTLOOP_REDIS_URL``), else None (no pointer exists then);
  :func:`lazy_references_from_env` the same, made at its first use (a
  worker's first GC: it imports redis then, not before it learns);
- :func:`pointer_for_changes`: the full pointer the CLI changes, with the
  store's version check and the ``version-events`` log.

The rollback history holds the store's ``rollback_depth``
(``DRIFTLOOP_STORE_ROLLBACK_DEPTH``) versions: one setting for what the
pointer remembers and what retention keeps.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from services.checkpoints.config import StoreConfig
from services.checkpoints.retention import VersionReferences
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.pointer.base import VersionCheck

if TYPE_CHECKING:  # imported where used: a process without a Redis URL never needs redis
    import redis

    from services.pointer.redis import RedisPointer


def redis_client(config: RedisConfig) -> redis.Redis[str]:
    """A client for ``config`` (raises ConfigError when no URL is configured)."""
    import redis

    return redis.Redis.from_url(config.url, **config.client_options())


def references_from_env(
    store: StoreConfig,
    config: RedisConfig | None = None,
    *,
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
) -> RedisPointer | None:
    """The Redis pointer, read-only use, for GC and tiering; None without a Redis URL.

    Its :meth:`~RedisPointer.references` raises when Redis cannot be read or
    has lost a pointer the ``version-events`` log knows (see
    :meth:`~services.pointer.writer.PointerWriter.references`), which aborts
    a GC run before anything is deleted.
    """
    rc = config if config is not None else RedisConfig()
    if not rc.url:
        return None
    from services.pointer.log import KafkaVersionLog
    from services.pointer.redis import RedisPointer

    log = KafkaVersionLog(
        kafka if kafka is not None else KafkaConfig(),
        (topics if topics is not None else TopicsConfig()).version_events,
    )
    return RedisPointer(
        redis_client(rc), key_prefix=rc.key_prefix, history_depth=store.rollback_depth, log=log
    )


class LazyReferences:
    """:func:`references_from_env`'s pointer, made at the first :meth:`references`."""

    def __init__(
        self,
        store: StoreConfig,
        config: RedisConfig,
        *,
        kafka: KafkaConfig | None = None,
        topics: TopicsConfig | None = None,
    ) -> None:
        self._args = (store, config, kafka, topics)
        self._pointer: RedisPointer | None = None
        self._lock = threading.Lock()

    def pointer(self) -> RedisPointer:
        """The pointer (made now if it was not)."""
        with self._lock:
            if self._pointer is None:
                store, config, kafka, topics = self._args
                self._pointer = references_from_env(store, config, kafka=kafka, topics=topics)
            pointer = self._pointer
        assert pointer is not None  # noqa: S101 - built only with a Redis URL; guards no input
        return pointer

    def references(self, model: str) -> VersionReferences:
        return self.pointer().references(model)


def lazy_references_from_env(
    store: StoreConfig,
    config: RedisConfig | None = None,
    *,
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
) -> LazyReferences | None:
    """:func:`references_from_env`, its pointer made at its first use; None without a URL."""
    rc = config if config is not None else RedisConfig()
    if not rc.url:
        return None
    return LazyReferences(store, rc, kafka=kafka, topics=topics)


def pointer_for_changes(
    store: StoreConfig,
    check: VersionCheck | None,
    *,
    redis_config: RedisConfig | None = None,
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
) -> RedisPointer:
    """The pointer a process changes: store check, log of ``version-events``, store's depth."""
    from services.pointer.log import KafkaVersionLog
    from services.pointer.redis import RedisPointer

    rc = redis_config if redis_config is not None else RedisConfig()
    log = KafkaVersionLog(
        kafka if kafka is not None else KafkaConfig(),
        (topics if topics is not None else TopicsConfig()).version_events,
    )
    return RedisPointer(
        redis_client(rc),
        key_prefix=rc.key_prefix,
        history_depth=store.rollback_depth,
        check=check,
        log=log,
    )
