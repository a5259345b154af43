"""How far the join has handled each input partition, and what to do with the next record.

The joiner's table records, per input topic partition, the next offset the
join has handled (:meth:`streams.joiner.TablePendingStore.put_handled`),
written with each record's own state changes. :class:`Frontier` keeps those
offsets in memory for the partitions a worker owns and judges every record
the stream delivers against them:

- at or below the frontier: ``handle`` it (below: a replay, which the join
  knows by its event_ids; at: the next record); the frontier then moves to
  the record's offset + 1;
- above the frontier: records were skipped, never delivered to the join
  (faust then counts them as acknowledged, see ``streams/joiner.py``).
  ``rewind``: the agent seeks the partition back to the frontier, and until
  the re-read reaches it, the records still queued from before the seek are
  dropped (``drop``; they are read again). If the re-read delivers the very
  record that revealed the skip again without anything at or below the
  frontier first, the offsets between are not there at all (compaction or
  transaction markers on a producer's topic): that gap is accepted and the
  record handled (``accept``). After :data:`MAX_DROPPED` drops with no sign of
  the re-read the seek is made again (``rewind``), so a lost seek cannot stall
  the partition.

Pure and synchronous; the agent does the seeking and the counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["handle", "accept", "drop", "rewind"]
Key = tuple[str, int]

#: Records dropped while a rewind is pending before the seek is made again.
MAX_DROPPED = 10_000


@dataclass
class _Rewind:
    floor: int
    trigger: int
    dropped: int = 0


@dataclass
class Frontier:
    """Per input ``(topic, partition)``: the next offset the table accounts for."""

    floors: dict[Key, int] = field(default_factory=dict)
    _pending: dict[Key, _Rewind] = field(default_factory=dict)

    def reset(self, floors: dict[Key, int]) -> None:
        """The owned partitions' offsets as read from the table after an assignment."""
        self.floors = dict(floors)
        self._pending.clear()

    def clear(self) -> None:
        """Forget everything (partitions revoked)."""
        self.reset({})

    def floor(self, key: Key) -> int | None:
        """The next offset of ``key`` the table accounts for, or None (unknown)."""
        return self.floors.get(key)

    def rewinding(self, key: Key) -> bool:
        """Whether a rewind of ``key`` waits for its re-read."""
        return key in self._pending

    def admit(self, key: Key, offset: int) -> Verdict:
        """What to do with the record at ``offset`` of ``key`` (see the module notes)."""
        floor = self.floors.get(key)
        pending = self._pending.get(key)
        if pending is not None:
            if offset <= pending.floor:
                del self._pending[key]
                return "handle"
            if offset == pending.trigger:
                del self._pending[key]
                return "accept"
            pending.dropped += 1
            if pending.dropped > MAX_DROPPED:
                pending.dropped = 0
                return "rewind"
            return "drop"
        if floor is None or offset <= floor:
            return "handle"
        self._pending[key] = _Rewind(floor=floor, trigger=offset)
        return "rewind"

    def handled(self, key: Key, offset: int, known: int | None = None) -> int:
        """The record at ``offset`` was handled: the frontier of ``key`` after it,
        never below ``known`` (what the table already says)."""
        floor = max(self.floors.get(key, 0), offset + 1, known if known is not None else 0)
        self.floors[key] = floor
        return floor
