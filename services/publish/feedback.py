"""Feedback from Python services: the validation of ``POST /v1/feedback``, and a producer.

:func:`validate_feedback` is the one check feedback passes before it is
published, whoever sends it: the model servers' feedback route and
:class:`FeedbackProducer` (kafka-python) for other Python services. It takes
one event or a list, as :class:`~schemas.events.FeedbackEvent` objects,
dicts, or JSON text/bytes, and returns validated events or raises one
:class:`~schemas.errors.SchemaError` naming the offending field (and, in a
list, the ``index`` of the event): nothing of a batch is sent unless all of
it is valid.

Feedback is at least once: a caller that got a :class:`PublishError` (or an
HTTP 503) sends again *with the same* ``event_id``, so the joiner drops the
repeat if the first attempt did arrive. That is why ``event_id`` is required
here and never filled in (build events with ``FeedbackEvent.new`` to get a
fresh one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from pydantic import ValidationError

from schemas import limits as L
from schemas.codec import schema_error_from
from schemas.errors import SchemaError
from schemas.events import FeedbackEvent
from services.config import KafkaConfig, TopicsConfig
from services.publish.base import DurablePublisher
from services.publish.kafka import KafkaPublisher

#: Most feedback events one call (one HTTP request) may carry.
MAX_FEEDBACK_BATCH: Final[int] = 1000
#: Largest JSON body of one call: a batch of ordinary feedback events fits easily.
MAX_FEEDBACK_BODY_BYTES: Final[int] = L.MAX_EVENT_BYTES

FeedbackInput = FeedbackEvent | Mapping[str, Any] | Sequence[FeedbackEvent | Mapping[str, Any]]


def validate_feedback(data: FeedbackInput | bytes | str) -> list[FeedbackEvent]:
    """The feedback events ``data`` holds, validated; SchemaError saying what is wrong.

    ``data`` is one event or a list of them (objects, dicts, or the JSON of
    either). An empty list is an error too: a request that sends nothing
    is a client bug.
    """
    if isinstance(data, bytes | bytearray | str):
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_FEEDBACK_BODY_BYTES:
            raise SchemaError(
                f"body is {len(raw)} bytes, over the limit of {MAX_FEEDBACK_BODY_BYTES} bytes"
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(f"not valid JSON: {exc}") from None
    items: list[Any]
    single = isinstance(data, FeedbackEvent | Mapping)
    if single:
        items = [data]
    elif isinstance(data, list | tuple):
        items = list(data)
    else:
        raise SchemaError("expected a FeedbackEvent object or a list of them")
    if not items:
        raise SchemaError("no feedback events given")
    if len(items) > MAX_FEEDBACK_BATCH:
        raise SchemaError(f"{len(items)} events, over the limit of {MAX_FEEDBACK_BATCH} per call")
    events: list[FeedbackEvent] = []
    for index, item in enumerate(items):
        where: dict[str, Any] = {} if single else {"index": index}
        if isinstance(item, FeedbackEvent):
            try:  # revalidate: model_construct or an in-place change could have broken it
                events.append(FeedbackEvent.model_validate(item.model_dump()))
            except ValidationError as exc:
                raise _located(schema_error_from(exc), where) from None
        elif isinstance(item, Mapping):
            try:
                events.append(FeedbackEvent.model_validate(dict(item)))
            except ValidationError as exc:
                raise _located(schema_error_from(exc), where) from None
        else:
            raise SchemaError("expected a JSON object", **where)
    return events


def _located(error: SchemaError, where: dict[str, Any]) -> SchemaError:
    if not where:
        return error
    return SchemaError(error.reason, field=error.field, **where, **error.context)


class FeedbackProducer:
    """Validates feedback and publishes it, returning once it is safe.

    Parameters
    ----------
    kafka
        Connection and security settings (used unless ``publisher`` is given).
    topics
        Topic names.
    publisher
        Where to publish (default: a :class:`KafkaPublisher` on ``kafka``,
        waiting for the broker's acknowledgement; a
        :class:`~services.publish.spooled.SpooledPublisher` also accepts what
        it fsynced to its spool).
    timeout_s
        How long :meth:`send` waits.

    Example
    -------
    >>> producer = FeedbackProducer(kafka_config)  # doctest: +SKIP
    >>> producer.send({"schema_version": 1, "event_id": "fb-1", "request_id": "r-1",
    ...                "model": "ctr", "ts": 1700000000000, "label": True})  # doctest: +SKIP
    """

    def __init__(
        self,
        kafka: KafkaConfig | None = None,
        topics: TopicsConfig | None = None,
        *,
        publisher: DurablePublisher | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if publisher is None:
            if kafka is None:
                raise ValueError("FeedbackProducer needs a KafkaConfig or a publisher")
            publisher = KafkaPublisher(kafka, topics)
        self.publisher = publisher
        self.timeout_s = timeout_s
        self._owned = isinstance(publisher, KafkaPublisher) and kafka is not None

    def send(self, data: FeedbackInput | bytes | str, timeout_s: float | None = None) -> list[str]:
        """Validate ``data`` and publish it; the event_ids, once acknowledged (or spooled).

        Raises
        ------
        SchemaError
            ``data`` is not valid feedback (nothing was sent).
        PublishError
            Not acknowledged (nor spooled) within the timeout; send again
            with the same events (same ``event_id``).
        """
        events = validate_feedback(data)
        self.publisher.publish_acked(
            list(events), self.timeout_s if timeout_s is None else timeout_s
        )
        return [e.event_id for e in events]

    def close(self) -> None:
        """Close the producer it made (a publisher passed in stays open)."""
        if self._owned and isinstance(self.publisher, KafkaPublisher):
            self.publisher.close()

    def __enter__(self) -> FeedbackProducer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
