"""The version pointer in Redis: one Lua script per change, so each change is atomic.

:class:`RedisPointer` computes a change in Python (:mod:`.transitions`, the
same functions the in-memory twin uses) from the pointer it read, then runs
one script that, only if ``epoch`` is still the one it read (compare-and-set;
0 for "no pointer"):

1. rewrites the pointer hash (:func:`~.base.pointer_key`) and the history
   list (:func:`~.base.history_key`);
2. appends the change's VersionEvent JSON to the outbox stream
   (:func:`~.base.outbox_key`) — the durable audit record until the relay
   (:mod:`.relay`) has copied it to ``version-events``;
3. PUBLISHes the same JSON on the model's channel (:func:`~.base.channel_name`).

Redis runs a script as one step, so a crash leaves either none or all of it:
a change applied in Redis always has its event in the outbox, and the relay
copies it to Kafka later even if the process that made it died right after.

:meth:`RedisPointer.restore` writes a pointer back from its last logged event
(``driftloop pointer restore``) only where Redis has no pointer or a lower
epoch, publishing it but not appending it to the outbox (it is in the log).

All keys live under one prefix (``DRIFTLOOP_REDIS_KEY_PREFIX``); the outbox is
one stream for every model, so this needs a single Redis, not a cluster.
"""

from __future__ import annotations

from typing import Any

import redis

from schemas.codec import encode
from schemas.events import VersionEvent
from services.pointer import transitions
from services.pointer.base import (
    PointerState,
    PointerUnavailableError,
    VersionCheck,
    VersionLog,
    channel_name,
    history_key,
    outbox_key,
    pointer_key,
)
from services.pointer.writer import PointerWriter

#: Writes the pointer hash and history list from ARGV (shared by both scripts).
_WRITE = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'live', ARGV[3], 'previous', ARGV[4],
           'canary', ARGV[5], 'canary_percent', ARGV[6], 'shadow', ARGV[7])
local n = tonumber(ARGV[10])
if n > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 11, 10 + n))
end
"""

#: KEYS: pointer, history, outbox. ARGV: expected epoch (0: none), new epoch, live,
#: previous, canary, canary_percent, shadow, channel, event JSON, history length, history...
_APPLY = (
    """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur ~= tonumber(ARGV[1]) then
  return {0, cur}
end
"""
    + _WRITE
    + """
redis.call('XADD', KEYS[3], '*', 'model', ARGV[11 + n], 'epoch', ARGV[2], 'event', ARGV[9])
redis.call('PUBLISH', ARGV[8], ARGV[9])
return {1, tonumber(ARGV[2])}
"""
)

#: Same KEYS and ARGV; writes only when Redis has no pointer or a lower epoch.
_RESTORE = (
    """
local cur = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if cur >= tonumber(ARGV[2]) then
  return {0, cur}
end
"""
    + _WRITE
    + """
redis.call('PUBLISH', ARGV[8], ARGV[9])
return {1, tonumber(ARGV[2])}
"""
)


class RedisPointer(PointerWriter):
    """:class:`~services.pointer.base.VersionPointer` over Redis (see the module docstring).

    Parameters
    ----------
    client
        A redis-py client with ``decode_responses=True``
        (:meth:`~services.config.RedisConfig.client_options`).
    key_prefix
        ``DRIFTLOOP_REDIS_KEY_PREFIX``.
    history_depth, check, log
        See :class:`~services.pointer.writer.PointerWriter`; ``log`` is
        required so a caller decides knowingly what a missing pointer means.
    """

    def __init__(
        self,
        client: redis.Redis[str],
        *,
        key_prefix: str,
        history_depth: int,
        check: VersionCheck | None = None,
        log: VersionLog | None,
    ) -> None:
        super().__init__(history_depth=history_depth, check=check, log=log)
        self.client = client
        self.prefix = key_prefix
        self._apply = client.register_script(_APPLY)
        self._restore = client.register_script(_RESTORE)

    def get(self, model: str) -> PointerState | None:
        return read_state(self.client, self.prefix, model)

    def models(self) -> list[str]:
        """Every model with a pointer under this prefix."""
        pattern = _glob_escape(self.prefix) + "*:pointer"
        try:
            keys = list(self.client.scan_iter(match=pattern, count=500))
        except redis.RedisError as exc:
            raise PointerUnavailableError(f"cannot list pointers: {exc}") from exc
        names = (k[len(self.prefix) : -len(":pointer")] for k in keys)
        return sorted(n for n in names if n and ":" not in n)  # model names hold no ":"

    def _store(self, change: transitions.Change) -> bool:
        expected = change.before.epoch if change.before is not None else 0
        return self._run(self._apply, expected, change.after, change.event)

    def restore(self, event: VersionEvent) -> bool:
        """Write back the pointer ``event`` describes, unless Redis has an equal or higher epoch.

        Returns True when written (and published on the model's channel).
        """
        return self._run(self._restore, 0, transitions.state_of(event), event)

    def _run(self, script: Any, expected: int, after: PointerState, event: VersionEvent) -> bool:
        model = after.model
        args: list[str | int] = [
            expected,
            after.epoch,
            after.live or "",
            after.previous or "",
            after.canary or "",
            repr(float(after.canary_percent)),
            after.shadow or "",
            channel_name(self.prefix, model),
            encode(event).decode(),
            len(after.history),
            *after.history,
            model,
        ]
        keys = [
            pointer_key(self.prefix, model),
            history_key(self.prefix, model),
            outbox_key(self.prefix),
        ]
        try:
            done, _epoch = script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise PointerUnavailableError(
                f"cannot change the pointer: {exc}", model=model, epoch=after.epoch
            ) from exc
        return bool(done)


class RedisPointerReader:
    """Read-only :class:`~services.pointer.base.PointerReader` over Redis (model servers).

    Reads exactly what :class:`RedisPointer` reads (:func:`read_state`), without
    what only a writer needs (history depth, version check, log).
    """

    def __init__(self, client: redis.Redis[str], *, key_prefix: str) -> None:
        self.client = client
        self.prefix = key_prefix

    def get(self, model: str) -> PointerState | None:
        return read_state(self.client, self.prefix, model)


def read_state(client: redis.Redis[str], prefix: str, model: str) -> PointerState | None:
    """The pointer hash and history list read in one MULTI, so both describe one change.

    Raises
    ------
    PointerUnavailableError
        Redis did not answer, or the hash does not parse ("cannot tell", never "no pointer").
    """
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(pointer_key(prefix, model))
            pipe.lrange(history_key(prefix, model), 0, -1)
            fields, history = pipe.execute()
    except redis.RedisError as exc:
        raise PointerUnavailableError(f"cannot read the pointer: {exc}", model=model) from exc
    return parse_state(model, dict(fields), list(history))


def parse_state(model: str, fields: dict[str, str], history: list[str]) -> PointerState | None:
    """The :class:`PointerState` of a pointer hash and history list (None: no hash at all).

    Formats per :mod:`services.pointer.base`. A hash that exists but has no
    integer ``epoch`` >= 0, or whose ``canary_percent`` is not a number in
    [0, 100], raises :class:`~services.pointer.base.PointerUnavailableError`:
    a malformed pointer is "cannot tell", not "no pointer" (which would let
    a writer create epoch 1 over it, or a server think it was flushed).
    """
    if not fields:
        return None
    try:
        epoch = int(fields["epoch"])
        percent = float(fields.get("canary_percent") or 0.0)
    except (KeyError, ValueError) as exc:
        raise PointerUnavailableError(
            f"the pointer hash is malformed: {exc!r}", model=model
        ) from None
    if epoch < 0 or not 0.0 <= percent <= 100.0:  # also refuses a NaN percent
        raise PointerUnavailableError(
            "the pointer hash is out of range", model=model, epoch=epoch, canary_percent=percent
        )
    return PointerState(
        model=model,
        epoch=epoch,
        live=fields.get("live") or None,
        previous=fields.get("previous") or None,
        canary=fields.get("canary") or None,
        canary_percent=percent,
        shadow=fields.get("shadow") or None,
        history=tuple(history),
    )


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
