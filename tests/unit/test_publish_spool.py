"""The durable spool: order, restart, torn tails, the size bound."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.publish.kafka import Record
from services.publish.spool import Spool, frame


def rec(i: int, size: int = 10) -> Record:
    return Record("t", f"k{i:03d}".encode(), f"{i:06d}".encode().ljust(size, b"."))


def values(spool: Spool) -> list[bytes]:
    out = []
    while batch := spool.read(7):
        out += [r.record.value for r in batch]
    return out


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    spool.append([rec(i) for i in range(50)])
    assert len(list(tmp_path.glob("seg-*.spool"))) > 3
    assert values(spool) == [rec(i).value for i in range(50)]
    assert spool.pending_records == 50


def test_only_acknowledged_records_leave_and_a_restart_resumes_after_them(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    spool.append([rec(i) for i in range(30)], sync=True)
    batch = spool.read(12)
    spool.ack(batch[-1])
    spool.read(10)  # read but not acknowledged: must come back after a restart
    spool.close()
    again = Spool(tmp_path, segment_bytes=200)
    assert again.pending_records == 18
    assert values(again) == [rec(i).value for i in range(12, 30)]


def test_rewind_reads_the_unacknowledged_records_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([rec(i) for i in range(5)])
    first = spool.read(3)
    spool.ack(first[0])
    spool.rewind()
    assert [r.record.value for r in spool.read(10)] == [rec(i).value for i in range(1, 5)]


def test_fully_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.append([rec(i) for i in range(40)])
    before = len(list(tmp_path.glob("seg-*.spool")))
    everything = []
    while batch := spool.read(100):
        everything += batch
    spool.ack(everything[-1])
    assert spool.pending_records == 0
    assert spool.pending_bytes == 0
    assert len(list(tmp_path.glob("seg-*.spool"))) == 1 < before
    spool.append([rec(99)])
    assert values(spool) == [rec(99).value]


def test_a_torn_tail_is_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    spool.append([rec(i) for i in range(5)], sync=True)
    spool.close()
    (segment,) = tmp_path.glob("seg-*.spool")
    with segment.open("ab") as f:
        f.write(frame(rec(5))[:-3])  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING):
        again = Spool(tmp_path)
    assert "torn or damaged" in caplog.text
    assert again.skipped_bytes == len(frame(rec(5))) - 3
    assert values(again) == [rec(i).value for i in range(5)]
    again.append([rec(6)])  # appends after the cut, readable
    assert values(again) == [rec(6).value]


def test_a_damaged_checksum_ends_the_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([rec(i) for i in range(4)], sync=True)
    spool.close()
    (segment,) = tmp_path.glob("seg-*.spool")
    data = bytearray(segment.read_bytes())
    data[len(frame(rec(0))) * 2 + 12] ^= 0xFF  # inside the third record's payload
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert values(again) == [rec(0).value, rec(1).value]


def test_a_full_spool_takes_what_fits_and_says_how_much(tmp_path: Path) -> None:
    one = len(frame(rec(0)))
    spool = Spool(tmp_path, max_bytes=3 * one)
    assert spool.append([rec(i) for i in range(5)]) == 3
    assert spool.append([rec(9)]) == 0
    spool.ack(spool.read(1)[0])  # room again once the broker has one
    assert spool.append([rec(10)]) == 1
    assert values(spool) == [rec(1).value, rec(2).value, rec(10).value]


def test_a_record_larger_than_the_read_size_is_read_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([rec(0, size=5000), rec(1)])
    batch = spool.read(10, max_bytes=100)
    assert [len(r.record.value) for r in batch] == [5000]
    assert [r.record.value for r in spool.read(10)] == [rec(1).value]
