"""Event-time clocks of the joiner: per-input watermarks and the expiry index.

Which clock closes a window
---------------------------
Windows close in **event time**, never on the wall clock, so the joined set
depends on the events and not on how fast a worker ran. Each *input* has,
per partition, its own watermark: the largest ``ts`` that input has
delivered to that partition. In the agent the inputs are the input *topic
partitions* (``inference:0`` ... ``feedback:N-1``), each of which can deliver
to every join partition, directly or forwarded through the repartition
topic (:mod:`services.attribution.routing`, which also says how a partition
learns the watermarks of the others); the unit tests of the join alone use
the two topics of one partition. Two rules use them:

1. **Lateness is judged per input.** Let ``W`` be the watermark of an
   event's own input just before the event: a property of that topic
   partition's own sequence, the same however the inputs' records are
   interleaved on the way in. An event more than ``window + grace`` behind
   (``ts < W - window - grace``) is ``late``. Feedback is also ``late`` when
   ``W`` had passed the end of its request's window (``W > inference.ts +
   window + grace``), judged once its inference is known (``W`` is kept with
   feedback that waits).
2. **Windows close on the minimum.** The partition's *closing watermark* is
   the minimum of the watermarks of the inputs that can still deliver to it
   (those not released as idle, below), and it never goes backwards. A
   request's window closes (``last``/``sum`` emit, the no-feedback policy
   applies) only once the closing watermark is strictly past its end,
   ``inference.ts + window + grace``; feedback waiting for its inference
   becomes ``orphan`` once it is past ``feedback.ts + 2 * window + grace``
   (the end of the window of the latest inference it could match).

Why the pair is enough: an event that is not late was delivered while its
own input's watermark, and so the closing watermark (a minimum that
includes it), was at most the end of the window it belongs to (for an
inference, its own window; for feedback, the window of the inference it is
attributed to, which is at least ``feedback.ts - window``). So it always
finds its window open, and feedback that waits always meets its inference
before its wait ends. Which examples exist, with which labels, and which
events are dead-lettered with which reason is then a function of each
input's own sequence alone, for every interleaving of the inputs, as long
as no idle release fired. Closed requests are remembered (a tombstone)
until the closing watermark is ``window + grace`` past every event they saw
and past ``inference.ts + window + closed_retention``, so a repeated
event_id not late by rule 1 always finds its request (a duplicate), and so
does feedback up to ``closed_retention`` after its window (``late``). The
one exception: feedback stamped more than ``window + closed_retention``
after its inference may meet the request forgotten, and is then judged as
if it were new (``orphan`` rather than ``late``); likewise a second
inference log for a forgotten request. The single shared watermark this
replaced let a dense or backlogged topic close the windows of the other
topic's unread records.

Idle inputs
-----------
An input partition with nothing to read would hold the minimum back for
ever. It is *released* (left out of the minimum, like Flink's
``withIdleness`` or Kafka Streams' ``max.task.idle.ms``) when the worker has
checked it, for ``idle_ms`` of wall-clock time without a break, to be read
up to its high watermark (the one from fetch responses), and no record of it
arrived in that time; see :meth:`Watermarks.report`. A released input
rejoins the minimum when a record of it arrives, when a check finds it
behind its high watermark again, or when its last check is more than
``idle_ms`` old (the worker was stopped or starved: what was idle may have
a backlog now); the closing watermark does not go back when it does.
Releases are counted (``JoinStats.idle_releases``): events of
a released input that are not late by rule 1 can then find their window
closed (``late``, "after its window closed"), and only then does the joined
set depend on timing. When *every* input of a partition is released (all of
them read to their ends, nothing new for ``idle_ms``), the closing watermark
is the minimum over the inputs that delivered something (those that never did
say nothing of event time), so windows that every input has passed close
instead of waiting for traffic that may not come. The windows close when the
partition next handles anything: a record, or a marker (an idle source's
marker comes every ``idle_ms / 2``, so with more than one partition that is
within about ``idle_ms``; a single-partition join has no markers and waits
for its next record).

The watermarks are per partition because partitions are the unit of
handover: a worker taking over partition 3 inherits partition 3's per-input
watermarks (persisted through
:class:`~services.attribution.state.PendingStore`) and nothing else; idle
state is not persisted (a new owner starts with every input active).

:class:`ExpiryIndex` is the joiner's own index of deadlines (faust's windowed
table expiry runs on its own timer and cannot drive this); it is derived
state, rebuilt from the stored entries whenever partitions are assigned.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


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


#: The inputs of the join today, in the order they are reported.
INFERENCE = "inference"
FEEDBACK = "feedback"
DEFAULT_INPUTS: tuple[str, ...] = (INFERENCE, FEEDBACK)


@dataclass
class _PartitionClock:
    marks: dict[str, int] = field(default_factory=dict)
    closing: int | None = None
    idle: set[str] = field(default_factory=set)
    caught_up_since: dict[str, int] = field(default_factory=dict)
    last_check: dict[str, int] = field(default_factory=dict)


class Watermarks:
    """Per-partition, per-input event-time watermarks and the closing watermark.

    Parameters
    ----------
    inputs
        Names of the inputs that can deliver to every partition; the closing
        watermark of a partition is the minimum over those not released.
    idle_ms
        The idle rule's wait (:meth:`report`); 0 never releases.
    """

    def __init__(self, inputs: Sequence[str] = DEFAULT_INPUTS, idle_ms: int = 0) -> None:
        if not inputs:
            raise ValueError("a join needs at least one input")
        self.inputs = tuple(inputs)
        self.idle_ms = idle_ms
        self._clocks: dict[int, _PartitionClock] = {}

    def _clock(self, partition: int) -> _PartitionClock:
        clock = self._clocks.get(partition)
        if clock is None:  # not setdefault: that builds a clock on every call
            clock = self._clocks[partition] = _PartitionClock()
        return clock

    def _check(self, input: str) -> None:
        if input not in self.inputs:
            raise KeyError(f"unknown join input {input!r} (inputs: {', '.join(self.inputs)})")

    def get(self, partition: int, input: str) -> int | None:
        """The largest ``ts`` ``input`` delivered on ``partition``, or None."""
        clock = self._clocks.get(partition)
        return None if clock is None else clock.marks.get(input)

    def observe(self, partition: int, input: str, ts: int, *, rejoin: bool = True) -> bool:
        """Account for an event at ``ts`` from ``input``; True if it rejoined.

        A record of a released input makes it rejoin the minimum (not so an
        idle marker, ``rejoin=False``, which only carries the watermark).
        """
        self._check(input)
        clock = self._clock(partition)
        current = clock.marks.get(input)
        if current is None or ts > current:
            clock.marks[input] = ts
        if not rejoin:
            return False
        clock.caught_up_since.pop(input, None)
        if input in clock.idle:
            clock.idle.discard(input)
            return True
        return False

    def closing(self, partition: int, now_ms: int) -> int | None:
        """The partition's closing watermark at wall-clock ``now_ms`` (None
        until every active input delivered something): the minimum over the
        inputs not released (every input released: over those that delivered
        something), never lower than it was.

        A release lapses (the input rejoins) when its last check is more than
        ``idle_ms`` old: the worker was stopped or starved, and what it found
        idle may have a backlog by now.
        """
        clock = self._clock(partition)
        for input in list(clock.idle):
            if now_ms - clock.last_check.get(input, now_ms) > self.idle_ms:
                clock.idle.discard(input)
                clock.caught_up_since.pop(input, None)
        active = [clock.marks.get(i) for i in self.inputs if i not in clock.idle]
        if not active:  # every input released: the inputs that delivered something
            active = [mark for mark in clock.marks.values() if mark is not None]
        if active and all(mark is not None for mark in active):
            low = min(mark for mark in active if mark is not None)
            if clock.closing is None or low > clock.closing:
                clock.closing = low
        return clock.closing

    def report(self, partition: int, input: str, *, caught_up: bool, now_ms: int) -> bool:
        """One check of ``input`` on ``partition`` at wall-clock ``now_ms``;
        True when it releases the input.

        ``caught_up``: the worker has handled every record of that topic
        partition up to its high watermark. The input is released at the
        first check that finds it caught up ``idle_ms`` or more after the
        first of an unbroken run of caught-up checks with no record of it in
        between. A record (:meth:`observe`), a check that finds it behind, or
        a check more than ``idle_ms`` after the previous one (the worker was
        stopped or starved) breaks the run, and the latter two make a
        released input rejoin. ``idle_ms == 0`` never releases.
        """
        self._check(input)
        clock = self._clock(partition)
        previous = clock.last_check.get(input)
        clock.last_check[input] = now_ms
        if not caught_up or (previous is not None and now_ms - previous > self.idle_ms):
            clock.caught_up_since.pop(input, None)
            clock.idle.discard(input)
            if not caught_up:
                return False
        since = clock.caught_up_since.setdefault(input, now_ms)
        if self.idle_ms <= 0 or input in clock.idle or now_ms - since < self.idle_ms:
            return False
        clock.idle.add(input)
        return True

    def release(self, partition: int, input: str, now_ms: int) -> bool:
        """Release ``input`` on ``partition`` because its owner found it idle
        (a marker, :mod:`services.attribution.routing`); True if it was not
        released already. Each call counts as a check at ``now_ms``: the
        release lapses in :meth:`closing` when none came for ``idle_ms``."""
        self._check(input)
        clock = self._clock(partition)
        clock.last_check[input] = now_ms
        if input in clock.idle:
            return False
        clock.idle.add(input)
        return True

    def rejoin(self, partition: int, input: str) -> None:
        """Put ``input`` back into ``partition``'s minimum (its owner found it
        busy again)."""
        self._check(input)
        clock = self._clock(partition)
        clock.idle.discard(input)
        clock.caught_up_since.pop(input, None)

    def is_idle(self, partition: int, input: str) -> bool:
        """Whether ``input`` is released from ``partition``'s minimum."""
        clock = self._clocks.get(partition)
        return clock is not None and input in clock.idle

    def restore(self, partition: int, input: str, ts: int | None) -> None:
        """Start ``input`` on ``partition`` from a persisted watermark (None: unknown)."""
        self._check(input)
        clock = self._clock(partition)
        if ts is None:
            clock.marks.pop(input, None)
        else:
            clock.marks[input] = max(ts, clock.marks.get(input, ts))

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._clocks.pop(partition, None)

    def items(self) -> dict[int, dict[str, int]]:
        """Every partition's per-input watermarks."""
        return {p: dict(c.marks) for p, c in self._clocks.items()}
