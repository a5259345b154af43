"""A durable local spool of Kafka records, for when the broker is unreachable.

:class:`Spool` keeps :class:`~services.publish.kafka.Record` s in a directory
of append-only segment files (``seg-<n>.spool``), oldest first, and hands
them back in the order they were appended. Each record is one frame::

    length  u32 big-endian   bytes of the payload
    crc32   u32 big-endian   zlib.crc32 of the payload
    payload                  topic length (u16), key length (u32), topic, key, value

Durability: :meth:`Spool.append` writes the frames to the operating system
at once; with ``sync=True`` (or a later :meth:`Spool.sync`) they are fsynced,
and a new segment's directory entry too, so they survive a power cut.

Removal: a record leaves the spool only through :meth:`Spool.ack`, which the
publisher calls once the broker acknowledged it. The read position of the
next start is the ``head`` file (segment and byte offset), replaced
atomically; a segment is deleted once every record in it is acknowledged. A
crash between the broker's acknowledgement and the ``head`` update sends
those records again on the next start (at least once; consumers drop
repeats by ``event_id``).

Crash recovery: on open every frame is checked. The first frame that is
incomplete or whose checksum does not match ends its segment: it and
everything after it in that segment are cut off (a torn write of a crash),
with a warning naming the segment, offset and bytes skipped
(:attr:`Spool.skipped_bytes` counts them).

Bound: :meth:`Spool.append` writes only the records that fit while the
frames not yet acknowledged stay within ``max_bytes``, and returns how many;
the caller counts (and logs) the rest as dropped.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.publish.base import PublishError
from services.publish.kafka import Record

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_LENGTHS = struct.Struct(">HI")
_SEGMENT = re.compile(r"^seg-(\d{16})\.spool$")
_HEAD = "head"
#: Default bound on the bytes of records not yet acknowledged.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Default size after which a new segment is started.
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024


class SpoolFullError(PublishError):
    """Events that did not fit the spool (raised by publishers, not by :class:`Spool`)."""


@dataclass(frozen=True, order=True)
class SpoolPosition:
    """A byte offset in one segment."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpooledRecord:
    """A record read from the spool, and the position just after it (for :meth:`Spool.ack`)."""

    record: Record
    end: SpoolPosition


def frame(record: Record) -> bytes:
    """The bytes of one spool frame holding ``record``."""
    topic = record.topic.encode()
    payload = _LENGTHS.pack(len(topic), len(record.key)) + topic + record.key + record.value
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _parse(payload: bytes) -> Record:
    topic_len, key_len = _LENGTHS.unpack_from(payload)
    start = _LENGTHS.size
    topic = payload[start : start + topic_len].decode()
    key = payload[start + topic_len : start + topic_len + key_len]
    return Record(topic, key, payload[start + topic_len + key_len :])


def _read_frame(data: bytes, offset: int) -> tuple[Record, int] | None:
    """The record at ``offset`` and the offset after it; None for a torn or damaged frame."""
    if offset + _HEADER.size > len(data):
        return None
    length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    payload = data[start : start + length]
    if len(payload) != length or zlib.crc32(payload) != crc or length < _LENGTHS.size:
        return None
    try:
        return _parse(payload), start + length
    except (struct.error, UnicodeDecodeError):
        return None


class Spool:
    """Records waiting for the broker, on disk, in order (see the module notes).

    Parameters
    ----------
    directory
        Where the segments live (created if missing); one publisher per directory.
    max_bytes
        Bound on the frames not yet acknowledged.
    segment_bytes
        A new segment starts once the current one is this large.

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.skipped_bytes = 0
        self._lock = threading.Lock()
        self._sizes: dict[int, int] = {}
        self._counts: dict[int, int] = {}
        self._tail: IO[bytes] | None = None
        self._dir_dirty = False
        self._unsynced = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._head = self._read_head()
        self._recover()
        self._cursor = self._head

    # -- opening -------------------------------------------------------------------------

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"seg-{segment:016d}.spool"

    def _read_head(self) -> SpoolPosition:
        try:
            text = (self.directory / _HEAD).read_text()
            segment, offset = (int(x) for x in text.split())
            return SpoolPosition(segment, offset)
        except FileNotFoundError:
            return SpoolPosition(0, 0)
        except ValueError:
            log.warning("spool %s: unreadable head file; replaying from the oldest segment", self)
            return SpoolPosition(0, 0)

    def _recover(self) -> None:
        segments = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name))
        )
        for segment in segments:
            path = self._segment_path(segment)
            if segment < self._head.segment:
                path.unlink()
                continue
            data = path.read_bytes()
            start = self._head.offset if segment == self._head.segment else 0
            offset, count = 0, 0
            while offset < len(data):
                parsed = _read_frame(data, offset)
                if parsed is None:
                    break
                if offset >= start:
                    count += 1
                offset = parsed[1]
            if offset < len(data):
                skipped = len(data) - offset
                self.skipped_bytes += skipped
                log.warning(
                    "spool %s: segment %d has a torn or damaged record at byte %d;"
                    " %d bytes after it skipped",
                    self.directory,
                    segment,
                    offset,
                    skipped,
                )
                with path.open("r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
            self._sizes[segment] = offset
            self._counts[segment] = count
        if not self._sizes:
            self._head = SpoolPosition(self._head.segment + (1 if self._head.offset else 0), 0)
        elif self._head.segment not in self._sizes:
            self._head = SpoolPosition(min(self._sizes), 0)
        elif self._head.offset > self._sizes[self._head.segment]:
            self._head = SpoolPosition(self._head.segment, self._sizes[self._head.segment])

    # -- state ---------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of the frames not yet acknowledged."""
        with self._lock:
            return self._pending_bytes()

    def _pending_bytes(self) -> int:
        return sum(self._sizes.values()) - self._head.offset if self._sizes else 0

    @property
    def pending_records(self) -> int:
        """Records not yet acknowledged."""
        with self._lock:
            return sum(self._counts.values())

    def __len__(self) -> int:
        return self.pending_records

    # -- writing -------------------------------------------------------------------------

    def append(self, records: Sequence[Record], *, sync: bool = False) -> int:
        """Append ``records`` in order, as many as fit; returns how many were written.

        The rest (``len(records)`` minus the result) did not fit under
        ``max_bytes``: the caller counts them as dropped (or raises
        :class:`SpoolFullError`). ``sync`` fsyncs before returning.
        """
        frames = [frame(r) for r in records]
        with self._lock:
            room = self.max_bytes - self._pending_bytes()
            fit, size = 0, 0
            while fit < len(frames) and size + len(frames[fit]) <= room:
                size += len(frames[fit])
                fit += 1
            for data in frames[:fit]:
                tail = self._tail_for_append()
                tail.write(data)
                segment = max(self._sizes)
                self._sizes[segment] += len(data)
                self._counts[segment] += 1
            if fit:
                assert self._tail is not None  # noqa: S101 - narrows the type; set by the loop
                self._tail.flush()
                self._unsynced = True
            if sync:
                self._sync()
            return fit

    @property
    def unsynced(self) -> bool:
        """Whether records were appended since the last fsync."""
        return self._unsynced

    def _tail_for_append(self) -> IO[bytes]:
        if self._sizes and self._sizes[max(self._sizes)] < self.segment_bytes:
            if self._tail is None:
                self._tail = self._segment_path(max(self._sizes)).open("ab")
            return self._tail
        if self._tail is not None:
            self._tail.flush()
            os.fsync(self._tail.fileno())
            self._tail.close()
            self._tail = None
        segment = max(self._sizes) + 1 if self._sizes else self._head.segment
        self._tail = self._segment_path(segment).open("ab")
        self._sizes[segment] = 0
        self._counts[segment] = 0
        self._dir_dirty = True
        return self._tail

    def sync(self) -> None:
        """fsync everything appended so far."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        self._unsynced = False
        if self._tail is not None:
            os.fsync(self._tail.fileno())
        if self._dir_dirty:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dir_dirty = False

    # -- reading -------------------------------------------------------------------------

    def read(self, max_records: int, max_bytes: int = 4 * 1024 * 1024) -> list[SpooledRecord]:
        """The next records after the last read (from the head after opening), oldest first.

        At least one record when any is left, even one over ``max_bytes``.
        Reading does not remove: only :meth:`ack` does.
        """
        out: list[SpooledRecord] = []
        taken = 0
        with self._lock:
            while len(out) < max_records and taken < max_bytes:
                segment, offset = self._cursor.segment, self._cursor.offset
                end = self._sizes.get(segment)
                if end is None or offset >= end:
                    later = [s for s in self._sizes if s > segment]
                    if not later:
                        break
                    self._cursor = SpoolPosition(min(later), 0)
                    continue
                with self._segment_path(segment).open("rb") as f:
                    f.seek(offset)
                    (length, _crc) = _HEADER.unpack(f.read(_HEADER.size))
                    want = max(_HEADER.size + length, min(end - offset, max_bytes - taken))
                    f.seek(offset)
                    data = f.read(want)
                pos = 0
                while len(out) < max_records and pos < len(data):
                    parsed = _read_frame(data, pos)
                    if parsed is None:
                        break  # the chunk ends inside a frame: the next loop reads it
                    record, pos = parsed
                    out.append(SpooledRecord(record, SpoolPosition(segment, offset + pos)))
                if pos == 0:
                    raise PublishError(
                        "spool record damaged while open",
                        directory=str(self.directory),
                        segment=segment,
                        offset=offset,
                    )
                taken += pos
                self._cursor = SpoolPosition(segment, offset + pos)
        return out

    def rewind(self) -> None:
        """Make the next :meth:`read` start again at the oldest unacknowledged record."""
        with self._lock:
            self._cursor = self._head

    def ack(self, through: SpooledRecord) -> None:
        """Remove every record up to and including ``through`` (the broker has them)."""
        with self._lock:
            end = through.end
            if end <= self._head:
                return
            for segment in sorted(self._sizes):
                if segment > end.segment:
                    break
                self._count_between(segment, end)
            self._head = end
            for segment in sorted(self._sizes):
                finished = segment < end.segment or (
                    segment == end.segment
                    and end.offset >= self._sizes[segment]
                    and segment != max(self._sizes)
                )
                if finished:
                    del self._sizes[segment]
                    del self._counts[segment]
                    self._segment_path(segment).unlink(missing_ok=True)
            if self._head.segment not in self._sizes:
                self._head = SpoolPosition(min(self._sizes), 0)
            tmp = self.directory / (_HEAD + ".tmp")
            tmp.write_text(f"{self._head.segment} {self._head.offset}\n")
            os.replace(tmp, self.directory / _HEAD)
            if self._cursor < self._head:
                self._cursor = self._head

    def _count_between(self, segment: int, end: SpoolPosition) -> int:
        """Acknowledge the records of ``segment`` before ``end``; returns how many."""
        start = self._head.offset if segment == self._head.segment else 0
        stop = end.offset if segment == end.segment else self._sizes[segment]
        if stop <= start:
            return 0
        with self._segment_path(segment).open("rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        count, pos = 0, 0
        while pos < len(data):
            parsed = _read_frame(data, pos)
            if parsed is None:
                break
            pos = parsed[1]
            count += 1
        self._counts[segment] -= count
        return count

    def close(self) -> None:
        """fsync and close the open segment; the spool can be opened again later."""
        with self._lock:
            if self._tail is not None:
                self._sync()
                self._tail.close()
                self._tail = None
