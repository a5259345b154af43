"""The Redis side of a model server besides reading pointers: change hints, epoch reports.

Pointers are read through :class:`services.pointer.redis.RedisPointerReader`
(the same parsing as the writer's :class:`~services.pointer.redis.RedisPointer`);
a server never changes them. What it writes is its own entry in
``{prefix}{model}:servers`` (:func:`~services.pointer.base.servers_key`:
server id -> JSON ``{"epoch": int, "ts": ms}``, what ``driftloop status``
shows). What it listens to is each model's version channel
(:func:`~services.pointer.base.channel_name`): each message is the change's
VersionEvent, so it carries the pointer after the change, which the follower
applies at once; a message that does not decode is only a hint to read the
pointer now.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import orjson
import redis

from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.events import VersionEvent
from services.pointer.base import PointerState, channel_name, servers_key
from services.pointer.transitions import state_of

log = logging.getLogger(__name__)


class RedisEpochReporter:
    """Writes ``{"epoch", "ts"}`` under this server's id in each model's servers hash."""

    def __init__(self, client: redis.Redis[str], prefix: str, server_id: str) -> None:
        self.client = client
        self.prefix = prefix
        self.server_id = server_id

    def report(self, model: str, epoch: int) -> None:
        value = orjson.dumps({"epoch": epoch, "ts": time.time_ns() // 1_000_000}).decode()
        self.client.hset(servers_key(self.prefix, model), self.server_id, value)

    def withdraw(self, model: str) -> None:
        self.client.hdel(servers_key(self.prefix, model), self.server_id)


class RedisHints:
    """Calls ``on_hint(model)`` for every message on the models' version channels.

    A hint only says "look now": the follower reads the pointer itself, so a
    lost message costs at most one poll interval. After a disconnect it
    reconnects with a capped backoff and hints every model once (something
    may have changed meanwhile).
    """

    def __init__(
        self, client_factory: Callable[[], redis.Redis[str]], prefix: str, models: Iterable[str]
    ) -> None:
        self.client_factory = client_factory
        self.channels = {channel_name(prefix, m): m for m in models}

    def run(
        self, on_hint: Callable[[str, PointerState | None], None], stop: threading.Event
    ) -> None:
        backoff = 0.2
        while not stop.is_set():
            client: redis.Redis[str] | None = None
            try:
                client = self.client_factory()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(*self.channels)
                for model in self.channels.values():
                    on_hint(model, None)
                backoff = 0.2
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    hinted = self.channels.get(str(message.get("channel")))
                    if hinted is not None:
                        on_hint(hinted, carried_state(message.get("data")))
            except (redis.RedisError, OSError) as exc:
                log.warning("version channel unreachable (%s); retrying", type(exc).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if client is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        client.close()


def carried_state(data: object) -> PointerState | None:
    """The pointer a channel message's VersionEvent describes, or None when the
    message is not one (then it is only a hint to read the pointer)."""
    if not isinstance(data, str | bytes):
        return None
    try:
        return state_of(decode(VersionEvent, data.encode() if isinstance(data, str) else data))
    except SchemaError:
        return None
