"""SpooledPublisher against a fake broker: outage -> spool -> drain in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.codec import decode
from schemas.events import CheckpointEvent, InferenceLog
from services.config import TopicsConfig
from services.deadletters import RawRecord, dead_letter
from services.publish import InMemoryPublisher, PublishError, route
from services.publish.kafka import Failure, Record, record_of
from services.publish.spool import SpoolFullError
from services.publish.spooled import SpooledPublisher


class FakeBroker:
    """Acknowledges every record while ``up`` is set; fails whole batches otherwise."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.delivered: list[Record] = []
        self.lock = threading.Lock()

    def sender(self) -> FakeSender:
        return FakeSender(self)

    def event_ids(self) -> list[str]:
        with self.lock:
            return [decode(InferenceLog, r.value).event_id for r in self.delivered]


class FakeSender:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.pending: list[Record] = []

    def send(self, record: Record) -> None:
        self.pending.append(record)

    def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
        pending, self.pending = self.pending, []
        if not self.broker.up.is_set():
            return len(pending), [(r, ConnectionError("broker unreachable")) for r in pending]
        with self.broker.lock:
            self.broker.delivered.extend(pending)
        return len(pending), []

    def close(self, timeout_s: float | None = None) -> None:
        self.pending = []


def log(i: int) -> InferenceLog:
    return InferenceLog.new(
        event_id=f"e{i:05d}",
        request_id=f"r{i}",
        model="ctr",
        model_version="v1",
        features={"x": float(i)},
        prediction=0.5,
        route="live",
        server="s1",
    )


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def publisher(broker: FakeBroker, path: Path, **options: object) -> SpooledPublisher:
    opts: dict[str, object] = {"retry_s": 0.01, "max_batch": 20} | options
    return SpooledPublisher(broker.sender, path, **opts)  # type: ignore[arg-type]


def test_events_are_sent_in_order_and_counted(tmp_path: Path) -> None:
    broker = FakeBroker()
    with publisher(broker, tmp_path) as pub:
        for i in range(100):
            pub.publish(log(i))
        pub.flush(60)
        assert pub.sent == 100
        assert pub.spooled == 0
    assert broker.event_ids() == [f"e{i:05d}" for i in range(100)]
    assert broker.delivered[0].topic == "inference-logs"
    assert broker.delivered[0].key == b"r0"


def test_an_outage_spools_and_the_spool_drains_first_in_order(tmp_path: Path) -> None:
    broker = FakeBroker()
    registry = CollectorRegistry()
    broker.up.clear()
    with publisher(broker, tmp_path, registry=registry) as pub:
        for i in range(60):
            pub.publish(log(i))
        wait_until(lambda: pub.spooling)
        for i in range(60, 120):
            pub.publish(log(i))
        wait_until(lambda: pub.spooled == 120)
        assert broker.delivered == []
        broker.up.set()
        wait_until(lambda: not pub.spooling)
        for i in range(120, 150):  # live events after the spool
            pub.publish(log(i))
        pub.flush(60)
        wait_until(lambda: pub.sent == 150)
    assert broker.event_ids() == [f"e{i:05d}" for i in range(150)]
    assert registry.get_sample_value("driftloop_publish_spooled_total") == 120
    assert registry.get_sample_value("driftloop_publish_sent_total") == 150
    assert registry.get_sample_value("driftloop_publish_spool_bytes") == 0


def test_a_full_buffer_overflows_into_the_spool_keeping_order(tmp_path: Path) -> None:
    broker = FakeBroker()
    gate = threading.Event()
    real_settle = FakeSender.settle

    def slow_settle(self: FakeSender, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
        gate.wait(60)
        return real_settle(self, timeout_s)

    FakeSender.settle = slow_settle  # type: ignore[method-assign]
    try:
        with publisher(broker, tmp_path, max_buffered=10) as pub:
            for i in range(40):
                pub.publish(log(i))
            assert pub.spooling
            assert pub.spooled >= 30
            gate.set()
            wait_until(lambda: len(set(broker.event_ids())) == 40)
    finally:
        FakeSender.settle = real_settle  # type: ignore[method-assign]
    ids = broker.event_ids()
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == [f"e{i:05d}" for i in range(40)]


def test_records_left_in_the_spool_are_sent_by_the_next_start(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker, tmp_path)
    for i in range(25):
        pub.publish(log(i))
    wait_until(lambda: pub.spooled == 25)
    pub.close(timeout_s=30)
    with publisher(broker, tmp_path) as again:  # the broker is still away: nothing drains yet
        assert again.spooling
        assert again.spool.pending_records == 25
        again.publish(log(25))
        broker.up.set()
        wait_until(lambda: again.sent == 26)
    assert broker.event_ids() == [f"e{i:05d}" for i in range(26)]


def test_publish_acked_returns_once_spooled_while_the_broker_is_away(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up.clear()
    with publisher(broker, tmp_path, settle_timeout_s=0.01) as pub:
        pub.publish_acked([log(0), log(1)], timeout_s=30)
        assert pub.spool.pending_records == 2
        assert not pub.spool.unsynced  # fsynced before returning
        broker.up.set()
        pub.publish_acked([log(2)], timeout_s=30)
        wait_until(lambda: pub.sent == 3)
    assert broker.event_ids() == ["e00000", "e00001", "e00002"]


def test_drops_when_the_spool_is_full_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    broker.up.clear()
    registry = CollectorRegistry()
    with publisher(broker, tmp_path, max_spool_bytes=2_000, registry=registry) as pub:
        for i in range(40):
            pub.publish(log(i))
        wait_until(lambda: pub.spooled + pub.dropped == 40)
        assert pub.dropped > 0
        with pytest.raises(SpoolFullError, match="spool is full"):
            pub.publish_acked([log(99)], timeout_s=30)
        assert registry.get_sample_value("driftloop_publish_dropped_total") == pub.dropped
    assert "is full" in caplog.text


def test_an_event_over_its_size_limit_is_refused_at_once(tmp_path: Path) -> None:
    broker = FakeBroker()
    # Valid events always fit (schemas.limits); one mutated past validation may not.
    huge = log(0).model_copy(update={"features": {f"f{i}": "x" * 500 for i in range(5000)}})
    with publisher(broker, tmp_path) as pub:
        with pytest.raises(PublishError, match="over the limit"):
            pub.publish(huge)
        with pytest.raises(PublishError, match="over the limit"):
            pub.publish_acked([log(1), huge], timeout_s=30)
        pub.flush(60)
        assert pub.sent == 0  # nothing of the refused calls was queued
        assert pub.spooled == 0
        pub.close()
        with pytest.raises(PublishError, match="closed"):
            pub.publish(log(2))


def test_route_gives_the_contract_topic_and_key() -> None:
    topics = TopicsConfig(prefix="p.")
    assert route(log(1), topics) == ("p.inference-logs", b"r1")
    event = CheckpointEvent.new(
        model="ctr",
        version="ctr-000001",
        step=1,
        examples_seen=8,
        trigger="count",
        location="x",
        manifest_sha256="0" * 64,
    )
    assert route(event, topics) == ("p.checkpoint-events", b"ctr")
    letter = dead_letter(RawRecord("p.feedback", 0, 3, b"k", b"bad"), "not json")
    assert route(letter, topics) == ("p.dead-letters", b"p.feedback")


def test_the_in_memory_twin_fails_a_flush_when_told() -> None:
    twin = InMemoryPublisher()
    twin.publish(log(0))
    twin.fail_next = True
    with pytest.raises(PublishError, match="1 events"):
        twin.flush()
    assert twin.sent == []


def test_close_sends_the_spool_while_the_broker_takes_it(tmp_path: Path) -> None:
    broker = FakeBroker()
    broker.up.clear()
    pub = publisher(broker, tmp_path, max_batch=7)
    for i in range(100):
        pub.publish(log(i))
    wait_until(lambda: pub.spooled == 100)
    broker.up.set()
    pub.close(timeout_s=60)
    assert broker.event_ids() == [f"e{i:05d}" for i in range(100)]
    assert pub.spool.pending_records == 0


def test_the_sender_thread_survives_a_broken_sender(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FakeBroker()
    made: list[FakeSender] = []

    class Breaks(FakeSender):
        def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
            if len(made) == 1:
                raise RuntimeError("sender bug")
            return super().settle(timeout_s)

    def factory() -> FakeSender:
        made.append(Breaks(broker))
        return made[-1]

    with SpooledPublisher(factory, tmp_path, retry_s=0.01) as pub:
        for i in range(10):
            pub.publish(log(i))
        wait_until(lambda: len(set(broker.event_ids())) == 10)
    assert len(made) == 2
    assert "sending failed" in caplog.text
    assert list(dict.fromkeys(broker.event_ids())) == [f"e{i:05d}" for i in range(10)]


def test_an_event_type_without_a_topic_cannot_be_routed() -> None:
    from schemas.events import Event

    with pytest.raises(PublishError, match="no topic"):
        route(Event.new(), TopicsConfig())


def test_publish_acked_spools_what_a_slow_broker_has_not_acknowledged(tmp_path: Path) -> None:
    broker = FakeBroker()
    gate = threading.Event()

    class Slow(FakeSender):
        def settle(self, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
            gate.wait(60)  # the broker takes its time
            return super().settle(timeout_s)

    with SpooledPublisher(lambda: Slow(broker), tmp_path, retry_s=0.01) as pub:
        pub.publish_acked([log(0), log(1)], timeout_s=1.0)  # returns: fsynced to the spool
        assert pub.spool.pending_records == 2
        assert not pub.spool.unsynced
        gate.set()
        wait_until(lambda: pub.spool.pending_records == 0)
    # the batch in flight when the spool took it arrives twice; once by event_id
    assert list(dict.fromkeys(broker.event_ids())) == ["e00000", "e00001"]


def test_a_requests_records_handed_over_at_once_keep_their_order_through_an_overflow(
    tmp_path: Path,
) -> None:
    """publish_records (a request's logs in one call): a call that does not fit the
    buffer goes to the spool after what the buffer held; feedback published meanwhile
    is fsynced there and acknowledged to its caller; first copies arrive in order."""
    broker = FakeBroker()
    gate = threading.Event()
    real_settle = FakeSender.settle

    def slow_settle(self: FakeSender, timeout_s: float | None = None) -> tuple[int, list[Failure]]:
        gate.wait(60)
        return real_settle(self, timeout_s)

    topics = TopicsConfig()
    FakeSender.settle = slow_settle  # type: ignore[method-assign]
    try:
        with publisher(broker, tmp_path, max_buffered=25) as pub:
            pub.publish_records([record_of(log(i), topics) for i in range(10)])
            assert not pub.spooling
            pub.publish_records([record_of(log(i), topics) for i in range(10, 30)])  # 30 > 25
            assert pub.spooling
            assert pub.spooled == 30  # the buffer's 10 (one batch in flight), then the 20
            pub.publish_acked([log(i) for i in range(30, 35)], timeout_s=5.0)
            assert pub.spool.pending_records == 35
            assert not pub.spool.unsynced
            pub.publish_records([record_of(log(i), topics) for i in range(35, 45)])
            gate.set()
            wait_until(lambda: len(set(broker.event_ids())) == 45)
            wait_until(lambda: not pub.spooling)
    finally:
        FakeSender.settle = real_settle  # type: ignore[method-assign]
    assert list(dict.fromkeys(broker.event_ids())) == [f"e{i:05d}" for i in range(45)]
