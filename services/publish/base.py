"""The one way driftloop publishes events.

An :class:`EventPublisher` takes a contract event and sends it to the topic
and key its type fixes (:func:`route`): inference logs and feedback by
``request_id``, dead letters by source topic, everything else by model.

Flush contract: :meth:`EventPublisher.publish` only queues (it may block
while a bounded buffer is full, and raises :class:`PublishError` at once for
an event that can never be sent, e.g. one over the size limit).
:meth:`EventPublisher.flush` returns once the broker acknowledged every
event queued before the call; if any of them failed it raises
:class:`PublishError` naming how many and the first cause, and those events
are *not* retried by a later flush: the caller decides (an agent fails its
batch so its input is read again; a server spools or answers 503).

Implementations, and when they are flushed:

- :class:`~services.publish.kafka.KafkaPublisher` (kafka-python): by its
  caller. At the deadline, records still unacknowledged count as failed and
  are abandoned (never sent later behind the caller's back).
- :class:`~services.publish.faust.FaustPublisher` (agents): by faust before
  every offset commit; ``await aflush()`` on the event loop (its sync
  ``flush`` only from another thread) raises as above.
- :class:`~services.publish.spooled.SpooledPublisher` (model servers), a
  :class:`DurablePublisher`: its failures *are* retried, from its local
  spool, in order, which is its purpose; so its ``flush`` returns once every
  event queued before the call is acknowledged or in the spool, and raises
  PublishError only when that did not happen within ``timeout_s`` (nothing
  is lost by that). What does not fit the spool is dropped, counted and
  logged; ``publish_acked`` raises for it.
- :class:`~services.publish.memory.InMemoryPublisher`: the twin unit tests use.

Delivery is at least once everywhere; consumers drop repeats by ``event_id``.
"""

from __future__ import annotations

from typing import Protocol

from schemas.errors import DriftloopError
from schemas.events import DeadLetter, Event, FeedbackEvent, InferenceLog
from services.config import TopicsConfig


class PublishError(DriftloopError):
    """Events that were not (or cannot be) acknowledged by the broker."""


def route(event: Event, topics: TopicsConfig) -> tuple[str, bytes]:
    """The topic and record key an event goes to under the contract."""
    if not event.topic:
        raise PublishError(f"{type(event).__name__} has no topic")
    topic = topics.name(event.topic)
    if isinstance(event, InferenceLog | FeedbackEvent):
        return topic, event.request_id.encode()
    if isinstance(event, DeadLetter):
        return topic, event.source_topic.encode()
    model: str | None = getattr(event, "model", None)
    if model is None:
        raise PublishError(f"{type(event).__name__} has no key field", topic=topic)
    return topic, model.encode()


class EventPublisher(Protocol):
    """Sends contract events; see the module notes for the flush contract."""

    def publish(self, event: Event) -> None: ...

    def flush(self, timeout_s: float | None = None) -> None: ...


class DurablePublisher(EventPublisher, Protocol):
    """A publisher that can also say "this is safe" per call (model servers).

    :meth:`publish_acked` returns once every event is acknowledged by the
    broker *or* fsynced to the local spool (sent, in order, when the broker
    is back); it raises :class:`PublishError` when neither happened within
    ``timeout_s`` (the feedback route answers 503 then).
    """

    def publish_acked(self, events: list[Event], timeout_s: float) -> None: ...
