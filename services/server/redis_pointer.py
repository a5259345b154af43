"""The Redis side of a model server: reading pointers, change hints, epoch reports.

Read-only with respect to the pointer: a server never changes it. What it
reads follows :mod:`services.pointer.base` (hash ``{prefix}{model}:pointer``
with string fields, ``epoch`` an integer, ``canary_percent`` a float, an
absent or empty version field meaning none; list ``{prefix}{model}:history``,
newest first), both read in one MULTI so they describe the same change. What
it writes is its own entry in ``{prefix}{model}:servers`` (server id -> JSON
``{"epoch": int, "ts": ms}``).

:class:`RedisPointerReader` is a :class:`~services.pointer.base.PointerReader`
of its own so that the server does not depend on the writer's module; any
other reader (``services.pointer.redis.RedisPointer``) plugs into
:func:`services.server.wiring.build_server` the same way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import orjson
import redis

from services.pointer.base import (
    PointerError,
    PointerState,
    channel_name,
    history_key,
    pointer_key,
    servers_key,
)

log = logging.getLogger(__name__)


def parse_pointer(model: str, fields: dict[str, str], history: list[str]) -> PointerState | None:
    """A :class:`PointerState` from the hash's fields (None: no pointer).

    Raises
    ------
    PointerError
        A field that does not parse (the pointer cannot be told).
    """
    if not fields:
        return None
    try:
        epoch = int(fields["epoch"])
        percent = float(fields.get("canary_percent") or 0.0)
    except (KeyError, ValueError) as exc:
        raise PointerError(f"pointer hash does not parse: {exc!r}", model=model) from None
    if epoch < 0 or not 0.0 <= percent <= 100.0:  # also refuses a NaN percent
        raise PointerError(
            "pointer hash out of range", model=model, epoch=epoch, canary_percent=percent
        )

    def version(name: str) -> str | None:
        return fields.get(name) or None

    return PointerState(
        model=model,
        epoch=epoch,
        live=version("live"),
        previous=version("previous"),
        canary=version("canary"),
        canary_percent=percent,
        shadow=version("shadow"),
        history=tuple(history),
    )


class RedisPointerReader:
    """Reads pointers from Redis (hash and history in one transaction)."""

    def __init__(self, client: redis.Redis[str], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def get(self, model: str) -> PointerState | None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(pointer_key(self.prefix, model))
        pipe.lrange(history_key(self.prefix, model), 0, -1)
        fields, history = pipe.execute()
        return parse_pointer(model, dict(fields), list(history))


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

    def run(self, on_hint: Callable[[str], None], stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            client: redis.Redis[str] | None = None
            try:
                client = self.client_factory()
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(*self.channels)
                for model in self.channels.values():
                    on_hint(model)
                backoff = 0.2
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    hinted = self.channels.get(str(message.get("channel")))
                    if hinted is not None:
                        on_hint(hinted)
            except (redis.RedisError, OSError) as exc:
                log.warning("version channel unreachable (%s); retrying", type(exc).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if client is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        client.close()
