"""The event publisher seam: kafka-python, faust and in-memory implementations."""

from services.publish.base import DurablePublisher, EventPublisher, PublishError, route

__all__ = ["DurablePublisher", "EventPublisher", "PublishError", "route"]
