"""The event publisher seam: kafka-python, spooled, faust and in-memory implementations.

``FaustPublisher`` lives in :mod:`services.publish.faust` and is not imported
here, so that model servers and tools do not import faust. ``SpooledPublisher``
is imported at its first use (``from services.publish import
SpooledPublisher`` works as usual): it imports prometheus_client and
confluent_kafka, which a faust worker, whose publisher is ``FaustPublisher``,
never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from services.publish.base import DurablePublisher, EventPublisher, PublishError, route
from services.publish.feedback import FeedbackProducer, validate_feedback
from services.publish.kafka import KafkaPublisher, Record
from services.publish.memory import InMemoryPublisher
from services.publish.spool import Spool, SpoolFullError

if TYPE_CHECKING:
    from services.publish.spooled import SpooledPublisher


def __getattr__(name: str) -> Any:
    if name == "SpooledPublisher":
        return importlib.import_module("services.publish.spooled").SpooledPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DurablePublisher",
    "EventPublisher",
    "FeedbackProducer",
    "InMemoryPublisher",
    "KafkaPublisher",
    "PublishError",
    "Record",
    "Spool",
    "SpoolFullError",
    "SpooledPublisher",
    "route",
    "validate_feedback",
]
