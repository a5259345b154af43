"""Event-time clocks of the joiner: per-partition watermarks and the expiry index.

Which clock closes a window
---------------------------
Windows close in **event time**: each input partition has a watermark, the
largest ``ts`` of any inference log or feedback event read from it so far, and
a request's window closes once that watermark has passed its deadline
(``inference.ts + window + grace``). Nothing looks at the wall clock, so
replaying the same records in the same order closes the same windows at the
same records and emits the same examples, whatever the replay's speed.
Wall-clock timers would make the result depend on how fast a worker ran and
how long it was down.

The price: a partition on which nothing arrives does not advance, and its
open windows wait for the next record. Grace is the allowed disorder: an
event whose ``ts`` is up to ``grace`` behind the watermark still joins.

The watermark is per partition because partitions are the unit of handover:
a worker taking over partition 3 inherits partition 3's watermark (persisted
through :class:`~services.attribution.state.PendingStore`) and nothing else.

:class:`ExpiryIndex` is the joiner's own index of deadlines (faust's windowed
table expiry runs on its own timer and cannot drive this); it is derived
state, rebuilt from the stored entries whenever partitions are assigned.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class ExpiryIndex:
    """Deadlines of pending requests, per partition, soonest first.

    A request has at most one live deadline; scheduling it again replaces the
    old one (the stale heap item is skipped when it surfaces).
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._live: dict[str, tuple[int, int]] = {}

    def schedule(self, partition: int, request_id: str, deadline: int) -> None:
        """Make ``deadline`` the one deadline of ``request_id`` on ``partition``."""
        if self._live.get(request_id) == (partition, deadline):
            return
        self._live[request_id] = (partition, deadline)
        heapq.heappush(self._heaps.setdefault(partition, []), (deadline, request_id))

    def cancel(self, request_id: str) -> None:
        """Forget the deadline of ``request_id`` (no error when it has none)."""
        self._live.pop(request_id, None)

    def pop_due(self, partition: int, watermark: int) -> list[str]:
        """Remove and return, soonest first, requests of ``partition`` whose
        deadline is strictly before ``watermark``."""
        heap = self._heaps.get(partition)
        due: list[str] = []
        while heap and heap[0][0] < watermark:
            deadline, request_id = heapq.heappop(heap)
            if self._live.get(request_id) == (partition, deadline):
                del self._live[request_id]
                due.append(request_id)
        return due

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget every deadline of ``partitions`` (they were revoked)."""
        gone = set(partitions)
        for partition in gone:
            self._heaps.pop(partition, None)
        self._live = {rid: pd for rid, pd in self._live.items() if pd[0] not in gone}

    def __len__(self) -> int:
        return len(self._live)

    def next_deadline(self, partition: int) -> int | None:
        """The soonest live deadline on ``partition``, or None."""
        heap = self._heaps.get(partition, [])
        while heap and self._live.get(heap[0][1]) != (partition, heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None


class Watermarks:
    """Per-partition event-time watermarks: the largest ``ts`` seen so far."""

    def __init__(self) -> None:
        self._marks: dict[int, int] = {}

    def get(self, partition: int) -> int | None:
        return self._marks.get(partition)

    def observe(self, partition: int, ts: int) -> int:
        """Account for an event at ``ts``; return the partition's watermark."""
        current = self._marks.get(partition)
        if current is None or ts > current:
            self._marks[partition] = ts
            return ts
        return current

    def restore(self, partition: int, ts: int | None) -> None:
        """Start ``partition`` from a persisted watermark (None: unknown)."""
        if ts is None:
            self._marks.pop(partition, None)
        else:
            self._marks[partition] = max(ts, self._marks.get(partition, ts))

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._marks.pop(partition, None)

    def items(self) -> dict[int, int]:
        return dict(self._marks)
