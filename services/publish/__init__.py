"""The event publisher seam: kafka-python, faust and in-memory implementations."""

from services.publish.base import DurablePublisher, EventPublisher, PublishError, route
from services.publish.memory import InMemoryPublisher

__all__ = ["DurablePublisher", "EventPublisher", "InMemoryPublisher", "PublishError", "route"]
