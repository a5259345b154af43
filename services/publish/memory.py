"""An :class:`~services.publish.base.EventPublisher` that keeps events in a list (unit tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.codec import decode
from schemas.events import Event
from services.config import TopicsConfig
from services.publish.base import PublishError, route
from services.publish.kafka import Record


@dataclass
class InMemoryPublisher:
    """Records ``(topic, key, event)`` in order; ``fail_next`` makes the next
    flush (or ``publish_acked``) fail as an unreachable broker would."""

    topics: TopicsConfig = field(default_factory=TopicsConfig)
    sent: list[tuple[str, bytes, Event]] = field(default_factory=list)
    pending: list[tuple[str, bytes, Event]] = field(default_factory=list)
    fail_next: bool = False

    def publish(self, event: Event) -> None:
        topic, key = route(event, self.topics)
        self.pending.append((topic, key, event))

    def publish_record(self, record: Record, kind: type[Event] | None = None) -> None:
        """An encoded ``kind`` event: decoded strictly (SchemaError when it is not valid)."""
        if kind is None:
            raise PublishError("the in-memory publisher needs the record's event type")
        self.pending.append((record.topic, record.key, decode(kind, record.value)))

    def publish_records(self, records: Sequence[Record], kind: type[Event] | None = None) -> None:
        """:meth:`publish_record` of each of ``records``, in order."""
        for record in records:
            self.publish_record(record, kind)

    def flush(self, timeout_s: float | None = None) -> None:
        pending, self.pending = self.pending, []
        if self.fail_next:
            self.fail_next = False
            raise PublishError(f"{len(pending)} events not acknowledged (simulated)")
        self.sent.extend(pending)

    def publish_acked(self, events: list[Event], timeout_s: float) -> None:
        for event in events:
            self.publish(event)
        self.flush(timeout_s)

    def events(self, kind: type[Event] | None = None) -> list[Event]:
        """The sent events, of one type if given."""
        return [e for _, _, e in self.sent if kind is None or isinstance(e, kind)]
