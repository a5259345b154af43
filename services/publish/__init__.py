"""The event publisher seam: kafka-python, faust and in-memory implementations."""

from services.publish.base import EventPublisher, PublishError, route

__all__ = ["EventPublisher", "PublishError", "route"]
