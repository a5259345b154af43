"""The pointer follower over fakes: catch-up, Redis away, backoff, epoch reports."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from schemas.codec import encode
from schemas.events import VersionEvent
from services.pointer.base import PointerState
from services.server.follower import PointerFollower
from services.server.redis_pointer import carried_state
from services.server.registry import ModelRegistry
from tests.unit.server_fakes import FakeLoader, FakeReader, FakeReporter, pointer


def _follower(**kw: object) -> tuple[PointerFollower, FakeReader, FakeLoader, FakeReporter]:
    loader, reader, reporter = FakeLoader(), FakeReader(), FakeReporter()
    registry = ModelRegistry("m", loader)
    follower = PointerFollower({"m": registry}, reader, reporter=reporter, **kw)  # type: ignore[arg-type]
    return follower, reader, loader, reporter


def _poll(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_unreadable_pointer_keeps_serving_and_says_why() -> None:
    follower, reader, _, _ = _follower()
    reader.states["m"] = pointer(3, live="v3")
    assert follower.check("m")
    reader.error = redis.ConnectionError("Connection refused")
    assert not follower.check("m")
    assert follower.registries["m"].epoch == 3
    assert "Connection refused" in (follower.status["m"].pointer_error or "")
    reader.error = None
    reader.states["m"] = pointer(4, live="v4")
    assert follower.check("m")
    assert follower.status["m"].pointer_error is None
    assert follower.registries["m"].serving.live.version == "v4"  # type: ignore[union-attr]


def test_a_lost_pointer_keeps_serving_until_restored_with_a_newer_epoch() -> None:
    follower, reader, _, _ = _follower()
    reader.states["m"] = pointer(7, live="v7")
    follower.check("m")
    reader.states["m"] = None  # Redis restarted empty
    assert not follower.check("m")
    assert follower.status["m"].pointer_missing
    assert follower.registries["m"].epoch == 7
    reader.states["m"] = pointer(7, live="v7")  # restored from version-events: same epoch
    assert not follower.check("m")
    reader.states["m"] = pointer(8, live="v8")
    assert follower.check("m")


def test_a_failed_load_is_retried_after_a_backoff_not_every_poll() -> None:
    now = [100.0]
    follower, reader, loader, _ = _follower(clock=lambda: now[0])
    reader.states["m"] = pointer(1, live="v1")
    follower.check("m")
    loader.broken.add("v2")
    reader.states["m"] = pointer(2, live="v2")
    assert not follower.check("m")
    assert not follower.check("m")  # within the backoff: not loaded again
    assert loader.loads.count("v2") == 1
    now[0] += 1.5
    loader.broken.clear()
    assert follower.check("m")
    assert loader.loads.count("v2") == 2


def test_reports_the_applied_epoch_and_withdraws_on_stop() -> None:
    follower, reader, _, reporter = _follower(poll_interval_s=0.05, report_interval_s=0.05)
    reader.states["m"] = pointer(5, live="v5")
    follower.start()
    try:
        assert _poll(lambda: ("m", 5) in reporter.reports)
        reader.states["m"] = pointer(6, live="v6")
        assert _poll(lambda: ("m", 6) in reporter.reports)  # caught up by polling alone
    finally:
        follower.stop()
    assert reporter.withdrawn == ["m"]


class _Hints:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.fire: Callable[[str, PointerState | None], None] | None = None

    def run(
        self, on_hint: Callable[[str, PointerState | None], None], stop: threading.Event
    ) -> None:
        self.fire = on_hint
        self.ready.set()
        stop.wait()


def test_a_hint_wakes_the_follower_before_the_poll_interval() -> None:
    hints = _Hints()
    follower, reader, _, _ = _follower(poll_interval_s=3600.0, hints=hints)
    reader.states["m"] = pointer(1, live="v1")
    follower.start()
    try:
        assert hints.ready.wait(30)
        reader.states["m"] = pointer(2, live="v2")
        assert hints.fire is not None
        hints.fire("m", None)
        assert _poll(lambda: follower.registries["m"].epoch == 2)
    finally:
        follower.stop()


def test_a_hint_carrying_the_pointer_is_applied_on_the_hint_thread_without_a_read() -> None:
    follower, reader, _, _ = _follower(poll_interval_s=3600.0)
    reader.states["m"] = pointer(1, live="v1")
    follower.check_all()
    reads = reader.reads
    follower.hint("m", pointer(2, live="v2"))  # the reader still says epoch 1
    assert follower.registries["m"].epoch == 2
    assert reader.reads == reads
    follower.hint("m", pointer(1, live="v1"))  # an older message changes nothing
    assert follower.registries["m"].epoch == 2


def test_a_channel_message_carries_the_pointer_of_its_version_event() -> None:
    event = VersionEvent.new(
        model="m",
        action="rollback",
        live="v1",
        previous=None,
        epoch=7,
        actor="ops",
        history=("v0",),
    )
    state = carried_state(encode(event).decode())
    assert state is not None
    assert (state.model, state.epoch, state.live, state.history) == ("m", 7, "v1", ("v0",))
    assert carried_state("not an event") is None
    assert carried_state(None) is None
