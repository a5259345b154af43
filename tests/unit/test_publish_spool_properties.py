"""Property: whatever appends, reads, acknowledgements, restarts and torn writes
happen, the spool hands back exactly the unacknowledged records, in order."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.publish.kafka import Record
from services.publish.spool import Spool, frame

Op = tuple[str, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("ack"), st.integers(1, 5)),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("torn"), st.integers(1, 30)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_the_spool_keeps_exactly_the_unacknowledged_records_in_order(steps: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        spool = Spool(path, segment_bytes=120)
        expected: list[bytes] = []
        counter = 0
        for op, n in steps:
            if op == "append":
                values = [f"v{counter + i}".encode() for i in range(n)]
                counter += n
                spool.append([Record("t", b"k", v) for v in values], sync=True)
                expected += values
            elif op == "ack":
                spool.rewind()
                batch = spool.read(n)
                assert [r.record.value for r in batch] == expected[: len(batch)]
                if batch:
                    spool.ack(batch[-1])
                    expected = expected[len(batch) :]
            elif op == "restart":
                spool.close()
                spool = Spool(path, segment_bytes=120)
            else:  # a crash in the middle of an append, then a restart
                spool.close()
                last = max(path.glob("seg-*.spool"), default=None)
                if last is not None:
                    with last.open("ab") as f:
                        f.write(frame(Record("t", b"k", b"torn" * 10))[: n % 40])
                spool = Spool(path, segment_bytes=120)
            assert spool.pending_records == len(expected)
        spool.rewind()
        got: list[bytes] = []
        while batch := spool.read(4):
            got += [r.record.value for r in batch]
        assert got == expected
        spool.close()
