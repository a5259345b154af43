"""Pending join state: what the joiner remembers per request, and where.

Each ``request_id`` the joiner has seen and not yet forgotten has one
:class:`PendingRequest`: the inference log (once it came), the feedback events
(that came first, or that wait for the window to close), every ``event_id``
seen for it, and its lifecycle ``status``:

``open``     waiting: for feedback, for its inference, or for the window to close;
``emitted``  under ``feedback_policy="first"`` the example went out; the entry
             stays until the window closes so that repeats are recognised;
``closed``   the window closed; only the ids are kept (a tombstone), with the
             inference's event_id and ts when it had one (and the shadow
             log's event_id), so that late feedback, a second inference log
             and duplicates are told apart from new requests, until the
             retention runs out. A tombstone of feedback
             that never got its inference (``orphan``) is reopened by later
             feedback or by an inference log: nothing was joined there.

:class:`PendingStore` is the seam between the join logic and the storage:
the faust agent implements it on a changelog-backed table
(``streams/joiner.py``); :class:`InMemoryPendingStore` backs the unit tests.
Values cross the seam as models and are stored as JSON (never pickle).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import FeedbackEvent, InferenceLog, Scalar

Status = Literal["open", "emitted", "closed"]


class SourceRef(BaseModel):
    """Where a record came from: enough to find it again or dead-letter it.

    ``raw`` keeps the record's value as it arrived when those bytes differ
    from the event's canonical encoding (``None``: the encoding *is* the raw
    value), so a dead letter built long after the record (an ``orphan``, a
    ``late`` or wrong-model feedback) still carries the bytes that were sent.
    The agent fills it (``streams/joiner.py``); at most
    :data:`~schemas.limits.MAX_PENDING_RAW_BYTES` are kept, and ``raw_size``
    and ``raw_sha256`` then describe the whole value. Stored as base64.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    topic: str
    partition: int
    offset: int
    raw: bytes | None = None
    raw_size: int | None = None
    raw_sha256: str | None = None


class PendingFeedback(BaseModel):
    """One accepted feedback event, the record it came from, and ``mark``: the
    watermark of its own input just before it (None: none yet), by which it is
    judged late or not once its inference is known."""

    event: FeedbackEvent
    source: SourceRef
    mark: int | None = None


class PendingRequest(BaseModel):
    """Everything the joiner keeps for one ``request_id``.

    ``partition`` is the request's join partition (a function of its
    request_id, :func:`~services.attribution.routing.join_partition`, when
    the agent routes; the source partition otherwise), so state can be
    indexed and handed over per partition. ``deadline`` is the event time at
    which the entry next changes on its own: the window close for ``open`` and
    ``emitted`` entries, the end of retention for ``closed`` ones.
    ``closed_inference_id`` and ``closed_inference_ts`` keep, in a tombstone,
    the inference it had (None for an orphan tombstone); ``max_ts`` is the
    largest ``ts`` of the events in ``seen_event_ids``. ``inference`` is the
    request's live or canary log, the one that makes its example;
    ``shadow`` its shadow log (``route="shadow"``), kept for scoring only,
    and ``closed_shadow_id`` that log's event_id in a tombstone.
    ``shadow_mark`` is the watermark of the shadow log's input just before
    it (0: none yet), by which it is judged read in time or not once the
    live log is known; ``other_shadow_mark`` the smallest such mark of the
    request's other shadow logs (None: no other), which make the shadow
    ambiguous when read in time too (see :mod:`services.attribution.joiner`).
    ``example_label`` is the label of the example emitted at the match
    (``feedback_policy="first"``), kept until the window closes for the
    request's :class:`~schemas.events.ShadowScore`. Entries written before
    these fields existed have none of them and read unchanged.
    """

    request_id: str
    partition: int
    status: Status = "open"
    deadline: int
    inference: InferenceLog | None = None
    inference_source: SourceRef | None = None
    feedback: list[PendingFeedback] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)
    example_id: str | None = None
    first_seen_ms: int = 0
    closed_inference_id: str | None = None
    closed_inference_ts: int | None = None
    max_ts: int = 0
    shadow: InferenceLog | None = None
    closed_shadow_id: str | None = None
    shadow_mark: int = 0
    other_shadow_mark: int | None = None
    example_label: Scalar | None = None

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.seen_event_ids

    def saw(self, event: InferenceLog | FeedbackEvent) -> None:
        """Record ``event`` as seen: its event_id, and ``max_ts`` (the largest
        ``ts`` of any event seen, which bounds how long the entry is kept)."""
        self.seen_event_ids.append(event.event_id)
        self.max_ts = max(self.max_ts, event.ts)

    def to_bytes(self) -> bytes:
        """JSON bytes for the changelog-backed table."""
        return self.model_dump_json(exclude_defaults=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> PendingRequest:
        """Read back what :meth:`to_bytes` wrote."""
        return cls.model_validate_json(data)


class PendingStore(Protocol):
    """Keyed storage of :class:`PendingRequest` entries and per-input watermarks.

    The joiner calls these synchronously while it handles one input record;
    every write must be durable (or made durable with the record's offset
    commit) for a handover to carry the state. A failure raised here stops
    the handling of that record and propagates to the agent.
    """

    def get(self, request_id: str) -> PendingRequest | None:
        """The entry for ``request_id``, or None."""
        ...

    def put(self, entry: PendingRequest) -> None:
        """Insert or replace the entry for ``entry.request_id``."""
        ...

    def delete(self, request_id: str) -> None:
        """Forget ``request_id``; a missing key is not an error."""
        ...

    def entries(self, partitions: frozenset[int]) -> Iterator[PendingRequest]:
        """Every stored entry whose ``partition`` is in ``partitions``."""
        ...

    def get_watermark(self, partition: int, input: str) -> int | None:
        """The last persisted watermark of ``input`` on ``partition``, or None.

        State written before watermarks were kept per input has one value
        per partition; it is returned for every input.
        """
        ...

    def put_watermark(self, partition: int, input: str, ts: int) -> None:
        """Persist the watermark of ``input`` on ``partition``."""
        ...


class InMemoryPendingStore:
    """A :class:`PendingStore` in plain dicts, for unit tests and the benchmark.

    Entries are kept as bytes, as the table keeps them, so a test exercises
    the same serialisation the faust store does.
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.watermarks: dict[tuple[int, str], int] = {}

    def get(self, request_id: str) -> PendingRequest | None:
        raw = self.data.get(request_id)
        return None if raw is None else PendingRequest.from_bytes(raw)

    def put(self, entry: PendingRequest) -> None:
        self.data[entry.request_id] = entry.to_bytes()

    def delete(self, request_id: str) -> None:
        self.data.pop(request_id, None)

    def entries(self, partitions: frozenset[int]) -> Iterator[PendingRequest]:
        for raw in list(self.data.values()):
            entry = PendingRequest.from_bytes(raw)
            if entry.partition in partitions:
                yield entry

    def get_watermark(self, partition: int, input: str) -> int | None:
        return self.watermarks.get((partition, input))

    def put_watermark(self, partition: int, input: str, ts: int) -> None:
        self.watermarks[(partition, input)] = ts

    def __len__(self) -> int:
        return len(self.data)
