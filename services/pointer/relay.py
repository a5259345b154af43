"""The outbox relay: pointer changes from the Redis stream to ``version-events``, once each.

Every pointer change appends its VersionEvent to the outbox stream in the
same script that changes the pointer (:mod:`.redis`). :func:`relay_pending`
copies what is there to the topic (key = model) and deletes a stream entry
only after the broker acknowledged its record (``acks=all``). A crash
anywhere leaves the entry in the stream, so the next run copies it.

Who runs it
-----------
- every pointer-changing CLI command relays right after its change (a CLI
  exits, so it cannot be the only relay: if it dies in between, the entry
  waits in the stream);
- model servers and workers call :func:`relay_pending` periodically (every
  few seconds) and copy whatever a dead CLI left pending; an empty outbox
  costs one ``XRANGE``.

Exactly once, by event id
-------------------------
A relay that crashed after the broker acknowledged but before it deleted
the entry leaves a record on the topic *and* the entry in the stream. So
before sending, the relay reads the topic from the offsets up to which
relays have already confirmed it (hash :func:`~.base.relayed_key`, per
partition) to the high watermark and skips every pending entry whose event
id (``{model}:{epoch}``) is already there. One relay runs at a time (a
Redis lock with a TTL of :data:`LOCK_TTL_MS`, released by its token): two
relays could otherwise both find an entry missing and both send it. A relay
that holds the lock past its TTL (a send stuck longer than the producer's
own timeouts allow) could let a second one in; the producer's timeouts are
kept well below the TTL for that reason.

An entry whose event id is on the topic with *different* content means
epochs were reused (Redis restored from an older snapshot rather than
emptied): it is neither sent nor deleted, counted in
:attr:`RelayResult.conflicts` and logged at ERROR.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

import kafka.errors
import redis

from schemas.codec import decode
from schemas.errors import BrokerError, SchemaError
from schemas.events import VersionEvent
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import make_producer
from services.pointer.base import (
    PointerUnavailableError,
    outbox_key,
    relay_lock_key,
    relayed_key,
)
from services.pointer.log import read_records

log = logging.getLogger(__name__)

#: How long a relay may hold the lock; producer timeouts stay well below it.
LOCK_TTL_MS = 120_000
#: Entries copied per run at most (the rest wait for the next run).
BATCH = 1000

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class RelayResult:
    """What one run did: records sent, entries found already on the topic, entries left,
    and entries left because the topic holds a *different* change with their event id."""

    sent: int
    duplicates: int
    left: int
    conflicts: int = 0


class OutboxRelay:
    """Copies the outbox of one key prefix to one topic (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis[str],
        *,
        key_prefix: str,
        kafka: KafkaConfig,
        topic: str,
        timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.prefix = key_prefix
        self.kafka = kafka
        self.topic = topic
        self.timeout_s = timeout_s
        self._release = client.register_script(_RELEASE)

    def pending(self) -> int:
        """Entries waiting in the outbox."""
        try:
            return int(self.client.xlen(outbox_key(self.prefix)))
        except redis.RedisError as exc:
            raise PointerUnavailableError(f"cannot read the outbox: {exc}") from exc

    def relay_pending(self, *, wait_s: float = 0.0) -> RelayResult:
        """Copy every pending outbox entry to the topic, once each.

        Returns at once with nothing done when the outbox is empty, or when
        another relay holds the lock and it is not free within ``wait_s``
        (that relay copies what is pending, or the next run does).

        Raises
        ------
        PointerUnavailableError
            Redis could not be read or written.
        BrokerError
            The broker did not acknowledge (the entries stay pending).
        """
        key = outbox_key(self.prefix)
        try:
            if not self.client.xlen(key):
                return RelayResult(0, 0, 0)
            token = self._lock(wait_s)
            if token is None:
                return RelayResult(0, 0, self.pending())
            try:
                sent, dups, conflicts = self._relay_locked(key)
            finally:
                self._release(keys=[relay_lock_key(self.prefix)], args=[token])
            return RelayResult(sent, dups, self.pending(), conflicts)
        except redis.RedisError as exc:
            raise PointerUnavailableError(f"cannot relay the outbox: {exc}") from exc

    def _lock(self, wait_s: float) -> str | None:
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        while True:
            if self.client.set(relay_lock_key(self.prefix), token, nx=True, px=LOCK_TTL_MS):
                return token
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _relay_locked(self, key: str) -> tuple[int, int, int]:
        entries = self.client.xrange(key, count=BATCH)
        if not entries:
            return 0, 0, 0
        marks_raw = self.client.hgetall(relayed_key(self.prefix))
        start = {
            int(k.rsplit(":", 1)[1]): int(v)
            for k, v in marks_raw.items()
            if k.rsplit(":", 1)[0] == self.topic
        }
        try:
            logged, hw = read_records(self.kafka, self.topic, start, timeout_s=self.timeout_s)
        except kafka.errors.KafkaError as exc:
            raise BrokerError(f"cannot read {self.topic}: {exc}", topic=self.topic) from exc
        on_topic = {e.event.event_id: e.event for e in logged if e.event is not None}
        marks = {p: max(off, start.get(p, 0)) for p, off in hw.items()}
        done: list[str] = []
        duplicates = conflicts = 0
        to_send: list[tuple[str, str, str]] = []
        for entry_id, fields in entries:
            model, epoch, event = fields.get("model"), fields.get("epoch"), fields.get("event")
            if not model or not epoch or not event:
                log.error("outbox entry %s is malformed, left in place: %s", entry_id, fields)
                continue
            logged_event = on_topic.get(f"{model}:{epoch}")
            if logged_event is not None:
                if not _same_event(logged_event, event):
                    # The topic holds another change with this epoch: Redis went back in
                    # time (restored from an older snapshot?). Keep this record for a human.
                    log.error(
                        "outbox entry %s (%s epoch %s) collides with a different logged change;"
                        " left in the outbox, see `driftloop status`",
                        entry_id,
                        model,
                        epoch,
                    )
                    conflicts += 1
                    continue
                duplicates += 1
                done.append(entry_id)
            else:
                to_send.append((entry_id, model, event))
        if to_send:
            for entry_id, p, offset in self._send(to_send):
                done.append(entry_id)
                marks[p] = max(marks.get(p, 0), offset + 1)
        with self.client.pipeline(transaction=True) as pipe:
            if done:
                pipe.xdel(key, *done)
            if marks:
                pipe.hset(
                    relayed_key(self.prefix),
                    mapping={f"{self.topic}:{p}": off for p, off in marks.items()},
                )
            pipe.execute()
        return len(to_send), duplicates, conflicts

    def _send(self, items: list[tuple[str, str, str]]) -> list[tuple[str, int, int]]:
        timeout_ms = int(self.timeout_s * 1000)
        try:
            producer = make_producer(
                self.kafka,
                max_in_flight_requests_per_connection=1,  # per-model order survives retries
                retries=5,
                max_block_ms=timeout_ms,
                request_timeout_ms=min(timeout_ms, self.kafka.request_timeout_ms),
            )
        except kafka.errors.KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka: {exc}", topic=self.topic) from exc
        try:
            futures = [
                (entry_id, producer.send(self.topic, key=model.encode(), value=event.encode()))
                for entry_id, model, event in items
            ]
            producer.flush(timeout=self.timeout_s)
            acked = []
            for entry_id, future in futures:
                meta = future.get(timeout=self.timeout_s)
                acked.append((entry_id, int(meta.partition), int(meta.offset)))
            return acked
        except kafka.errors.KafkaError as exc:
            raise BrokerError(
                f"the broker did not acknowledge pointer changes: {exc}", topic=self.topic
            ) from exc
        finally:
            producer.close(timeout=5)


def _same_event(logged: VersionEvent, raw: str) -> bool:
    try:
        return decode(VersionEvent, raw) == logged
    except SchemaError:
        return False


def relay_pending(
    redis_config: RedisConfig | None = None,
    kafka: KafkaConfig | None = None,
    topics: TopicsConfig | None = None,
    *,
    client: redis.Redis[str] | None = None,
    wait_s: float = 0.0,
) -> RelayResult:
    """Copy what is pending in the pointer outbox to ``version-events``; call periodically.

    The entry point for model servers and workers (every few seconds, off
    the request path: it blocks on Redis and, when something is pending, on
    Kafka) and for the CLI after each change. Settings default to the
    environment; pass ``client`` to reuse a connection. See the module
    docstring for why this is safe to run from many processes at once.
    """
    rc = redis_config if redis_config is not None else RedisConfig()
    own = client is None
    conn = client if client is not None else redis.Redis.from_url(rc.url, **rc.client_options())
    try:
        relay = OutboxRelay(
            conn,
            key_prefix=rc.key_prefix,
            kafka=kafka if kafka is not None else KafkaConfig(),
            topic=(topics if topics is not None else TopicsConfig()).version_events,
        )
        return relay.relay_pending(wait_s=wait_s)
    finally:
        if own:
            conn.close()
