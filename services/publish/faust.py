"""The :class:`~services.publish.base.EventPublisher` for faust agents.

:class:`FaustPublisher` sends through the app's own producer, on topics it
declares with raw key and value serializers (the bytes are
:func:`schemas.codec.encode` of the event, the key is :func:`~services.publish.base.route`'s).
Sending through faust is what makes agents safe: faust flushes its producer
(buffer and broker acknowledgements) before every offset commit
(``Consumer.commit``), so an input offset is never committed ahead of the
events its processing published; a crash before the commit re-reads the
input and publishes again (consumers drop repeats by ``event_id``).

Two ways to send, both on the event loop:

- ``await publisher.send(event)``: hands the record to the producer now
  (what an agent does; inside an agent faust may attach it to the event
  being processed and send it when that event is acknowledged);
- ``publisher.publish(event)``: sync, queues it in faust's producer buffer
  (``send_soon``) for code that cannot await.

Failures are never silent: each unacknowledged record is logged when faust
reports it, and :meth:`FaustPublisher.aflush` (or :meth:`~FaustPublisher.flush`
from another thread) raises :class:`~services.publish.base.PublishError`
with their count and the first cause, per the flush contract.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import faust

from schemas.events import Event
from services.config import TopicsConfig
from services.publish.base import PublishError
from services.publish.kafka import Failure, Record, publish_error, record_of

log = logging.getLogger(__name__)


class FaustPublisher:
    """Publishes contract events through a faust app's producer.

    Parameters
    ----------
    app
        The faust app (its producer, its loop).
    topics
        Topic names.
    """

    def __init__(self, app: faust.App, topics: TopicsConfig) -> None:
        self.app = app
        self.topics = topics
        self._channels: dict[str, Any] = {}
        self._inflight: set[asyncio.Future[Any]] = set()
        self._failures: list[Failure] = []
        self._total = 0

    def channel(self, name: str) -> Any:
        """The app's topic ``name`` with raw serializers (declared once)."""
        if name not in self._channels:
            self._channels[name] = self.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
        return self._channels[name]

    def publish(self, event: Event) -> None:
        """Queue ``event`` in faust's producer buffer (call on the app's event loop)."""
        record = record_of(event, self.topics)
        fut = self.channel(record.topic).send_soon(key=record.key, value=record.value)
        self._track(record, fut)

    async def send(self, event: Event) -> None:
        """Hand ``event`` to faust's producer now (agents await this)."""
        record = record_of(event, self.topics)
        result = await self.channel(record.topic).send(key=record.key, value=record.value)
        self._track(record, result)

    def _track(self, record: Record, result: Awaitable[Any]) -> None:
        self._total += 1
        if not isinstance(result, asyncio.Future):
            return  # faust handed back no future to watch; its flush before commit still covers it
        self._inflight.add(result)

        def done(fut: asyncio.Future[Any]) -> None:
            self._inflight.discard(fut)
            if fut.cancelled():
                cause: BaseException = asyncio.CancelledError("send cancelled")
            elif (exc := fut.exception()) is not None:
                cause = exc
            else:
                return
            log.error(
                "event to %s not acknowledged: %s: %s", record.topic, type(cause).__name__, cause
            )
            self._failures.append((record, cause))

        result.add_done_callback(done)

    async def aflush(self, timeout_s: float | None = None) -> None:
        """Wait for the acknowledgement of every event published so far.

        Raises
        ------
        PublishError
            Some were not acknowledged (since the last flush): how many, and
            the first cause; or the wait timed out.
        """
        try:
            await asyncio.wait_for(self._flush_all(), timeout_s)
        except TimeoutError:
            raise PublishError(
                f"{len(self._inflight)} events not acknowledged within {timeout_s} s",
                count=len(self._inflight),
            ) from None
        failures, self._failures = self._failures, []
        total, self._total = self._total, 0
        if failures:
            raise publish_error(failures, total)

    async def _flush_all(self) -> None:
        await self.app.producer.flush()
        if self._inflight:
            await asyncio.wait(set(self._inflight))

    def flush(self, timeout_s: float | None = None) -> None:
        """:meth:`aflush` from a thread other than the app's event loop.

        On the loop itself, ``await aflush()`` instead (blocking the loop
        would stop the very producer we wait for): that raises PublishError.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise PublishError("FaustPublisher.flush called on the event loop; await aflush()")
        future = asyncio.run_coroutine_threadsafe(self.aflush(timeout_s), self.app.loop)
        future.result()
