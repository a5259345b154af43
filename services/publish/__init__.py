"""The event publisher seam: kafka-python, spooled, faust and in-memory implementations.

``FaustPublisher`` lives in :mod:`services.publish.faust` and is not imported
here, so that model servers and tools do not import faust.
"""

from services.publish.base import DurablePublisher, EventPublisher, PublishError, route
from services.publish.feedback import FeedbackProducer, validate_feedback
from services.publish.kafka import KafkaPublisher, Record
from services.publish.memory import InMemoryPublisher
from services.publish.spool import Spool, SpoolFullError
from services.publish.spooled import SpooledPublisher

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
